//! The images: the dataset index, decoding and preprocessing, the decode-once cache and the
//! pixel store on disk behind it, the train/validation split and k-fold assignment, and
//! class-imbalance weights.

pub mod cache;
pub mod class_weights;
pub mod dataset;
pub mod imaging;
pub mod pixel_store;
pub mod split;
