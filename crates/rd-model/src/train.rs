//! One optimisation step at a time: forward in training mode, loss, backward, Adam.
//!
//! A step is two halves, [`Trainer::compute`] (forward and backward) and [`Trainer::apply`]
//! (the Adam update), so that a caller can look at the loss and gradients in between: [`crate::Fit`]
//! refuses a non-finite loss there, and the parity tests compare every gradient with anomalib's.
//! Both run exactly the code `rd train` runs.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::{Adam, AdamConfig, Features, Loss, Result, ReverseDistillation};

/// A model with its optimiser over the student's trainable parameters.
#[derive(Debug)]
pub struct Trainer {
    model: ReverseDistillation,
    adam: Adam,
}

/// What the first half of a step computed: features, loss and gradients, before the update.
#[derive(Debug)]
pub struct StepState {
    /// Teacher, bottleneck and student features (student in training mode).
    pub features: Features,
    /// The loss of the batch.
    pub loss: Loss,
    /// The gradient of the loss for every trainable parameter that has one.
    pub grads: GradStore,
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

    /// Forward in training mode and backward on an ImageNet-normalised batch. The student's
    /// BatchNorm running statistics move; the weights do not until [`Trainer::apply`].
    pub fn compute(&self, x: &Tensor) -> Result<StepState> {
        let features = self.model.features(x, true)?;
        let loss = crate::rd_loss(&features.teacher, &features.student)?;
        let grads = loss.total.backward()?;
        Ok(StepState {
            features,
            loss,
            grads,
        })
    }

    /// The Adam update from a computed step. A failure here may leave it half-applied.
    pub fn apply(&mut self, state: &StepState) -> Result<()> {
        Ok(self.adam.step(&state.grads)?)
    }

    /// One whole step; returns the loss before the update.
    pub fn step(&mut self, x: &Tensor) -> Result<Loss> {
        let state = self.compute(x)?;
        self.apply(&state)?;
        Ok(state.loss)
    }

    /// Ends training, returning the model.
    pub fn into_model(self) -> ReverseDistillation {
        self.model
    }
}
