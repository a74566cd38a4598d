//! Closing the loop: collected uploads merged back into the dataset (journalled, undoable) and
//! the labelling page that sorts them.

pub mod label;
pub mod merge;
