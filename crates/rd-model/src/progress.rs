//! What long runs report as they go. The library draws nothing: the caller turns these reports
//! into a progress bar, heartbeat lines or nothing at all.

/// How far a training run ([`crate::Fit::run_with`]) or a scoring pass
/// ([`crate::predict::predict_with`]) is, reported after every step or batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Units done so far by this call: optimiser steps when training, images when scoring.
    pub done: u64,
    /// Units this call expects in all.
    pub total: u64,
    /// Training only: the current epoch (1-based) and the epochs to reach.
    pub epoch: Option<(usize, usize)>,
    /// Training only: the running mean loss of the current epoch.
    pub loss: Option<f64>,
    /// Images per second, over the current epoch when training, over the call when scoring.
    pub images_per_sec: f64,
}
