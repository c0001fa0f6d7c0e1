//! One optimisation step at a time: forward in training mode, loss, backward, Adam.

use crate::{Adam, AdamConfig, Loss, Result, ReverseDistillation};
use candle_core::Tensor;

/// A model with its optimiser over the student's trainable parameters.
#[derive(Debug)]
pub struct Trainer {
    model: ReverseDistillation,
    adam: Adam,
}

impl Trainer {
    /// Starts training `model` with a fresh optimiser.
    pub fn new(model: ReverseDistillation, config: AdamConfig) -> Self {
        let adam = Adam::new(model.student_params().trainable_vars(), config);
        Trainer { model, adam }
    }

    /// The model being trained.
    pub fn model(&self) -> &ReverseDistillation {
        &self.model
    }

    /// The optimiser (for saving or restoring its state).
    pub fn optimizer_mut(&mut self) -> &mut Adam {
        &mut self.adam
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &Adam {
        &self.adam
    }

    /// One step on an ImageNet-normalised batch; returns the loss before the update.
    pub fn step(&mut self, x: &Tensor) -> Result<Loss> {
        let loss = self.model.loss(x)?;
        let grads = loss.total.backward()?;
        self.adam.step(&grads)?;
        Ok(loss)
    }

    /// Ends training, returning the model.
    pub fn into_model(self) -> ReverseDistillation {
        self.model
    }
}
