//! `--device cpu|cuda[:N]|metal`: the type lives in rd-model, shared with `cargo xtask bench`.

pub use rd_model::DeviceSpec as DeviceArg;
