//! Storage locations. Each backend lives in `storage/<name>/`.

pub mod local;
