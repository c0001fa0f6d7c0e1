//! Integration tests of rd-dataset: one binary, one module per area.

mod common;
mod images;
mod layouts;
mod loader;
mod resize_reference;
mod synthetic;
