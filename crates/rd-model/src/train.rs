//! One optimisation step at a time: forward in training mode, loss, backward, Adam.
//!
//! A step is either two halves, [`Trainer::compute`] (forward and backward) and
//! [`Trainer::apply`] (the Adam update), so that a caller can look at the loss and gradients in
//! between (the parity tests compare every gradient with anomalib's), or one
//! [`Trainer::step_checked`], which [`crate::Fit`] runs: the loss is checked before any update,
//! and on the training engine each parameter is updated as soon as its gradient is complete.
//! Both give the same numbers, bit for bit, through the same kernels.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId};
use rd_backbone::FeatureMaps;

use crate::engine::Engine;
use crate::{Adam, AdamConfig, Features, Loss, Result, ReverseDistillation};

/// A model with its optimiser over the student's trainable parameters.
#[derive(Debug)]
pub struct Trainer {
    model: ReverseDistillation,
    adam: Adam,
    engine: Engine,
}

/// What [`Trainer::engine_forward`] computed: everything up to the student's backward pass.
struct EngineForward {
    teacher: FeatureMaps,
    pass: crate::engine::Pass,
    loss: Loss,
    /// The loss's gradient for each student feature map, finest first.
    d: [crate::engine::buf::Buf; 3],
}

/// How a step computes its gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backprop {
    /// The explicit training engine where it runs (f32 on the CPU), else Candle's autograd.
    Engine,
    /// Candle's autograd over the model's ops, on any device.
    Graph,
}

/// The parts of [`Trainer::compute`], in order (see [`Trainer::compute_marked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPhase {
    /// The frozen teacher's features (eval kernels).
    Teacher,
    /// The student's forward pass in training mode.
    StudentForward,
    /// The loss and, on the engine, its gradient for the student's features.
    Loss,
    /// The backward pass through the student.
    Backward,
}

impl StepPhase {
    /// Every phase, in order.
    pub const ALL: [StepPhase; 4] = [
        StepPhase::Teacher,
        StepPhase::StudentForward,
        StepPhase::Loss,
        StepPhase::Backward,
    ];

    /// The phase's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            StepPhase::Teacher => "teacher",
            StepPhase::StudentForward => "student forward",
            StepPhase::Loss => "loss",
            StepPhase::Backward => "backward",
        }
    }
}

/// The gradients of one step, by parameter: from the training engine or Candle's autograd.
#[derive(Debug, Clone, Default)]
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    /// The gradient of `param`, if it got one.
    pub fn get(&self, param: &Tensor) -> Option<&Tensor> {
        self.0.get(&param.id())
    }

    /// Sets the gradient of `param`.
    pub fn insert(&mut self, param: &Tensor, grad: Tensor) {
        self.0.insert(param.id(), grad);
    }

    /// How many parameters have a gradient.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no parameter has one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<GradStore> for Gradients {
    fn from(store: GradStore) -> Self {
        let grads = store
            .get_ids()
            .filter_map(|id| Some((*id, store.get_id(*id)?.clone())));
        Gradients(grads.collect())
    }
}

/// What the first half of a step computed: features, loss and gradients, before the update.
#[derive(Debug)]
pub struct StepState {
    /// Teacher, bottleneck and student features (student in training mode).
    pub features: Features,
    /// The loss of the batch.
    pub loss: Loss,
    /// The gradient of the loss for every trainable parameter that has one.
    pub grads: Gradients,
}

impl Trainer {
    /// Starts training `model` with a fresh optimiser.
    pub fn new(model: ReverseDistillation, config: AdamConfig) -> Self {
        let adam = Adam::new(model.student_params().trainable_vars(), config);
        Trainer {
            model,
            adam,
            engine: Engine::new(),
        }
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
    ///
    /// On the CPU in f32 this runs the explicit training engine (see [`Engine`]), elsewhere
    /// Candle's autograd ([`Trainer::compute_with_graph`]).
    pub fn compute(&self, x: &Tensor) -> Result<StepState> {
        self.compute_marked(x, Backprop::Engine, &mut |_| {})
    }

    /// [`Trainer::compute`] through `backprop`, calling `mark` with each [`StepPhase`] as it
    /// ends (for profiles).
    pub fn compute_marked(
        &self,
        x: &Tensor,
        backprop: Backprop,
        mark: &mut dyn FnMut(StepPhase),
    ) -> Result<StepState> {
        let teacher = self.teacher_features(x)?;
        mark(StepPhase::Teacher);
        if backprop == Backprop::Graph || !Engine::supports(x) {
            return self.graph_step(teacher, mark);
        }
        let f = self.engine_forward(teacher, mark)?;
        let student = self.model.student();
        let bottleneck = f.pass.bottleneck.to_tensor()?;
        let [c, b, a] = f.pass.features.each_ref().map(|s| s.to_tensor());
        let features = FeatureMaps([c?, b?, a?]);
        let mut grads = Gradients::default();
        let mut sink = |param: &Tensor, grad: &[f32]| {
            grads.insert(
                param,
                Tensor::from_slice(grad, param.shape(), param.device())?,
            );
            Ok(())
        };
        self.engine.backward(student, f.pass, f.d, &mut sink)?;
        mark(StepPhase::Backward);
        Ok(StepState {
            features: Features {
                teacher: f.teacher,
                bottleneck,
                student: features,
            },
            loss: f.loss,
            grads,
        })
    }

    /// The frozen teacher's features of an ImageNet-normalised batch at the model's size, as a
    /// step computes them. The teacher never changes, so an image's features are the same in
    /// every epoch and whatever batch it comes in (bit for bit): [`Trainer::step_from_teacher`]
    /// can take them from an earlier epoch.
    pub fn teacher_features(&self, x: &Tensor) -> Result<FeatureMaps> {
        self.model.check_batch(x)?;
        let teacher = self.model.teacher();
        Ok(if Engine::supports(x) {
            rd_kernels::on_pool(|| teacher.forward(x))?
        } else {
            teacher.forward(x)?
        })
    }

    /// The engine's forward pass, the loss and its gradient for the student's features.
    fn engine_forward(
        &self,
        teacher: FeatureMaps,
        mark: &mut dyn FnMut(StepPhase),
    ) -> Result<EngineForward> {
        let pass = self.engine.forward(self.model.student(), &teacher)?;
        mark(StepPhase::StudentForward);
        let (terms, d) = self.engine.loss(&teacher, &pass)?;
        let device = teacher.0[0].device().clone();
        let scalar = |v: f64| Tensor::new(v as f32, &device);
        let loss = Loss {
            total: scalar(terms.iter().sum())?,
            terms: [scalar(terms[0])?, scalar(terms[1])?, scalar(terms[2])?],
        };
        mark(StepPhase::Loss);
        Ok(EngineForward {
            teacher,
            pass,
            loss,
            d,
        })
    }

    /// One whole step whose loss `check` sees before anything is updated (an error from it
    /// ends the step with the model untouched). On the engine the optimiser updates each
    /// parameter as soon as its gradient is complete, so the step never holds all the
    /// gradients at once (a quarter of the training memory that the optimiser's state adds to
    /// the weights); the result is bit-identical to [`Trainer::compute`] then
    /// [`Trainer::apply`]. A failure after `check` may leave the update half-applied.
    pub fn step_checked(
        &mut self,
        x: &Tensor,
        check: &mut (dyn FnMut(&Loss) -> Result<()> + Send),
    ) -> Result<Loss> {
        let teacher = self.teacher_features(x)?;
        self.step_from_teacher(teacher, check)
    }

    /// [`Trainer::step_checked`] from the teacher's features of the batch (see
    /// [`Trainer::teacher_features`]) instead of its images: the same step, bit for bit, without
    /// the teacher's forward pass. [`crate::Fit`] keeps the features of each training image
    /// from its first epoch for the later ones. Fails for maps that are not the teacher's at
    /// the model's size.
    pub fn step_from_teacher(
        &mut self,
        teacher: FeatureMaps,
        check: &mut (dyn FnMut(&Loss) -> Result<()> + Send),
    ) -> Result<Loss> {
        self.model.check_teacher_features(&teacher)?;
        if !Engine::supports(&teacher.0[0]) {
            let state = self.graph_step(teacher, &mut |_| {})?;
            check(&state.loss)?;
            self.apply(&state)?;
            return Ok(state.loss);
        }
        rd_kernels::on_pool(|| {
            let f = self.engine_forward(teacher, &mut |_| {})?;
            check(&f.loss)?;
            let adam = &mut self.adam;
            let mut sink = |param: &Tensor, grad: &[f32]| adam.update_from_slice(param, grad);
            self.engine
                .backward(self.model.student(), f.pass, f.d, &mut sink)?;
            Ok(f.loss)
        })
    }

    /// [`Trainer::compute`] through Candle's autograd whatever the device: the reference the
    /// engine is tested against, and the path for GPUs and f64.
    pub fn compute_with_graph(&self, x: &Tensor) -> Result<StepState> {
        self.compute_marked(x, Backprop::Graph, &mut |_| {})
    }

    fn graph_step(
        &self,
        teacher: FeatureMaps,
        mark: &mut dyn FnMut(StepPhase),
    ) -> Result<StepState> {
        let (bottleneck, student) = self.model.student().forward_t(&teacher, true)?;
        mark(StepPhase::StudentForward);
        let loss = crate::rd_loss(&teacher, &student)?;
        mark(StepPhase::Loss);
        let grads = loss.total.backward()?.into();
        mark(StepPhase::Backward);
        let features = Features {
            teacher,
            bottleneck,
            student,
        };
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

    /// One whole step ([`Trainer::step_checked`] without a check); returns the loss before
    /// the update.
    pub fn step(&mut self, x: &Tensor) -> Result<Loss> {
        self.step_checked(x, &mut |_| Ok(()))
    }

    /// Ends training, returning the model.
    pub fn into_model(self) -> ReverseDistillation {
        self.model
    }
}
