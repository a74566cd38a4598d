//! flora: the whole life of an image classifier in one binary. Data flows
//! train → run store → slots → serve → collected_data → merge → dataset through a few typed
//! interfaces: [`dataset::DatasetIndex`], [`bundle::ModelBundle`], [`store::RunStore`].

pub mod bundle;
pub mod cache;
pub mod checkpoint;
pub mod class_weights;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod config;
pub mod coverage;
pub mod cv;
pub mod dataset;
pub mod device;
pub mod eval;
pub mod explain;
pub mod finetune;
pub mod fingerprint;
pub mod fsutil;
pub mod imaging;
pub mod infer;
pub mod label;
pub mod label_audit;
pub mod lifecycle;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod promote;
pub mod push;
pub mod registry;
pub mod report;
pub mod run_summary;
pub mod select;
pub mod serve;
pub mod split;
pub mod store;
pub mod sweep;
pub mod train;
pub mod unknown;
