//! flora: the whole life of an image classifier in one binary. Data flows
//! train → run store → slots → serve → collected_data → merge → dataset through a few typed
//! interfaces: [`data::dataset::DatasetIndex`], [`model::bundle::ModelBundle`],
//! [`track::store::RunStore`], [`track::slots::Registry`], [`serving::collect`] and
//! [`feedback::merge::journal`].
//!
//! The folders are layers, lowest first; each imports only from the ones before it (see
//! `ARCHITECTURE.md`): [`util`], [`ops`], [`data`], [`model`], [`config`], [`track`],
//! [`evaluate`], then [`train`] and [`serving`] (which never import each other), and
//! [`feedback`]. The command line (clap) lives in the binary, not here.

pub mod config;
pub mod data;
pub mod evaluate;
pub mod feedback;
pub mod model;
pub mod ops;
pub mod serving;
pub mod track;
pub mod train;
pub mod util;
