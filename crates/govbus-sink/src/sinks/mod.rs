//! The delivery targets.

pub mod file;
pub mod postgres;
pub mod view;
pub mod webhook;
