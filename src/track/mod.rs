//! Where runs and models are kept: the run store (MLflow's file-store layout), the per-epoch
//! record, the blue/green slots, the one model choice, soft delete, run summaries, and pushing
//! runs to an MLflow server.

pub mod epochs;
pub mod push;
pub mod select;
pub mod slots;
pub mod soft_delete;
pub mod store;
pub mod summary;
