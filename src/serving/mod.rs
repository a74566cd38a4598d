//! Putting a model to work: promotion into a slot behind a gate, the HTTP server, and the
//! collected uploads it saves for retraining.

pub mod collect;
pub mod promote;
pub mod serve;
