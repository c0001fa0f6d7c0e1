//! The explicit training engine against Candle's autograd over the same kernels. From the same
//! weights, one step of each gives bit-identical features (the same kernels in the same order),
//! the loss within 1e-6 relative (the engine sums its cosines in f64, Candle in f32) and the same
//! gradients up to that and the order in which the gradients of a value used twice are summed
//! (each block's input feeds its first stage and its shortcut, each decoder layer's output the
//! loss and the next layer): within 1e-5·max|graph| per parameter.
//!
//! Twin models drift apart after Adam (its first steps move every weight by about ±lr whatever
//! the gradient's size, so a 1e-7 difference in a near-zero gradient becomes 0.01 in a weight),
//! so later steps compare both paths on one model: the graph's step, then the engine's, whose
//! update is applied. Running statistics do not enter training-mode outputs, so moving them
//! twice changes nothing that is compared.

mod common;

use candle_core::Tensor;
use rd_backbone::{Backbone, FeatureMaps};
use rd_model::{AdamConfig, ReverseDistillation, StepState, Trainer};
use rd_tests::noise;

fn model(backbone: Backbone, size: usize) -> ReverseDistillation {
    common::seeded(backbone, size, (3, 4))
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

/// max |a − b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-30)
}

/// Asserts that two steps of twin trainers computed the same numbers: features within `tol`
/// relative (0: bit for bit), the loss within [`LOSS_TOL`], gradients within `grad_tol`.
fn assert_same_step(
    (engine, e_trainer): (&StepState, &Trainer),
    (graph, g_trainer): (&StepState, &Trainer),
    (tol, grad_tol): (f32, f32),
    what: &str,
) {
    let same = |a: &Tensor, b: &Tensor| match tol {
        0.0 => bits(a) == bits(b),
        _ => rel_err(a, b) <= tol,
    };
    let (le, lg) = (engine.loss.value().unwrap(), graph.loss.value().unwrap());
    assert!(
        ((le - lg) / lg).abs() <= LOSS_TOL,
        "{what}: loss {le} vs {lg}"
    );
    for k in 0..3 {
        let (te, tg) = (&engine.loss.terms[k], &graph.loss.terms[k]);
        let err = rel_err(te, tg);
        assert!(err <= LOSS_TOL, "{what}: loss term {k}: {err}");
    }
    for k in 0..3 {
        let (e, g) = (&engine.features.student[k], &graph.features.student[k]);
        assert!(
            same(e, g),
            "{what}: student features {k}: {}",
            rel_err(e, g)
        );
    }
    let (e, g) = (&engine.features.bottleneck, &graph.features.bottleneck);
    assert!(same(e, g), "{what}: bottleneck: {}", rel_err(e, g));
    let vars = e_trainer.model().student_params().trainable_vars();
    let twins = g_trainer.model().student_params().trainable_vars();
    let mut with_grad = 0;
    for ((name, var), (twin_name, twin)) in vars.iter().zip(&twins) {
        assert_eq!(name, twin_name);
        let (e, g) = (
            engine.grads.get(var.as_tensor()),
            graph.grads.get(twin.as_tensor()),
        );
        match (e, g) {
            (Some(e), Some(g)) => {
                with_grad += 1;
                let err = rel_err(e, g);
                assert!(err <= grad_tol, "{what}: gradient of {name}: {err}");
            }
            (None, None) => {}
            (e, g) => panic!(
                "{what}: {name} has a gradient on one path only (engine {}, graph {})",
                e.is_some(),
                g.is_some()
            ),
        }
    }
    // Every trainable parameter but the unused conv4/bn4 of the OCBE.
    assert_eq!(
        with_grad,
        vars.len() - 3,
        "{what}: parameters with a gradient"
    );
}

/// Relative tolerances of features (0: bit for bit) and of gradients.
const TOL: (f32, f32) = (0.0, 1e-5);

/// Relative tolerance of the loss and its terms.
const LOSS_TOL: f32 = 1e-6;

/// Engine and graph from twin models, one step: then the running statistics must agree too.
fn check_twins(backbone: Backbone, size: usize, batch: usize) {
    let engine = Trainer::new(model(backbone, size), AdamConfig::anomalib());
    let graph = Trainer::new(model(backbone, size), AdamConfig::anomalib());
    let x = noise(&[batch, 3, size, size], 11, 2.0);
    let e = engine.compute(&x).unwrap();
    let g = graph.compute_with_graph(&x).unwrap();
    let what = format!("{backbone} {size}² batch {batch}");
    assert_same_step((&e, &engine), (&g, &graph), TOL, &what);
    common::assert_same_student(engine.model(), graph.model());
}

/// Both paths on one model for `batches` steps of the engine with Adam in between: the engine
/// reuses its buffers from step to step (and across batch sizes).
fn check_steps(backbone: Backbone, size: usize, batches: &[usize]) {
    let mut trainer = Trainer::new(model(backbone, size), AdamConfig::anomalib());
    for (step, &batch) in batches.iter().enumerate() {
        let x = noise(&[batch, 3, size, size], 11 + step as u64, 2.0);
        let g = trainer.compute_with_graph(&x).unwrap();
        let e = trainer.compute(&x).unwrap();
        let what = format!("{backbone} {size}² batch {batch} step {step}");
        assert_same_step((&e, &trainer), (&g, &trainer), TOL, &what);
        trainer.apply(&e).unwrap();
    }
}

#[test]
fn engine_equals_autograd_resnet18() {
    // 64²: the deepest maps are 2×2 (batched GEMMs); three steps of Adam.
    check_twins(Backbone::Resnet18, 64, 2);
    check_steps(Backbone::Resnet18, 64, &[2, 2, 2]);
}

#[test]
fn engine_equals_autograd_with_odd_batch_and_size() {
    // A last, smaller batch of 3 after a batch of 4 through the same engine (its buffers are
    // reused at another size), on 96² images (3×3 deepest maps).
    check_steps(Backbone::Resnet18, 96, &[4, 3, 4]);
}

#[test]
fn engine_equals_autograd_bottleneck_blocks() {
    // resnet50 has Bottleneck blocks (1×1 convolutions, the transposed convolution in the
    // middle stage). 64², two images: the deepest BatchNorms see 8 values per channel.
    check_twins(Backbone::Resnet50, 64, 2);
}

#[test]
fn engine_refuses_what_training_mode_cannot_do() {
    // One image of 32²: the deepest BatchNorm sees one value per channel.
    let trainer = Trainer::new(model(Backbone::Resnet18, 32), AdamConfig::anomalib());
    let x = noise(&[1, 3, 32, 32], 1, 1.0);
    let err = trainer.compute(&x).unwrap_err().to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
}

#[test]
fn fused_step_equals_compute_then_apply() {
    // `step_checked` updates each parameter as soon as its gradient is complete: the weights,
    // running statistics and optimiser state must be those of the two-half step, bit for bit.
    let mut fused = Trainer::new(model(Backbone::Resnet18, 64), AdamConfig::anomalib());
    let mut halves = Trainer::new(model(Backbone::Resnet18, 64), AdamConfig::anomalib());
    for step in 0..3 {
        let x = noise(&[2, 3, 64, 64], 60 + step, 2.0);
        let a = fused.step_checked(&x, &mut |_| Ok(())).unwrap();
        let state = halves.compute(&x).unwrap();
        halves.apply(&state).unwrap();
        assert_eq!(
            bits(&a.total),
            bits(&state.loss.total),
            "loss at step {step}"
        );
        common::assert_same_student(fused.model(), halves.model());
    }
    let (sa, sb) = (
        fused.optimizer().state_tensors().unwrap(),
        halves.optimizer().state_tensors().unwrap(),
    );
    assert_eq!(sa.len(), sb.len());
    for ((na, ta), (nb, tb)) in sa.iter().zip(&sb) {
        assert_eq!(na, nb);
        let (ta, tb) = (
            ta.to_dtype(candle_core::DType::F32).unwrap(),
            tb.to_dtype(candle_core::DType::F32).unwrap(),
        );
        assert_eq!(bits(&ta), bits(&tb), "optimiser state {na}");
    }
}

#[test]
fn a_step_from_teacher_features_equals_a_step_from_images() {
    let mut images = Trainer::new(model(Backbone::Resnet18, 64), AdamConfig::anomalib());
    let mut features = Trainer::new(model(Backbone::Resnet18, 64), AdamConfig::anomalib());
    for step in 0..2 {
        let x = noise(&[2, 3, 64, 64], 70 + step, 2.0);
        let a = images.step_checked(&x, &mut |_| Ok(())).unwrap();
        let teacher = features.teacher_features(&x).unwrap();
        let b = features
            .step_from_teacher(teacher, &mut |_| Ok(()))
            .unwrap();
        assert_eq!(bits(&a.total), bits(&b.total), "loss at step {step}");
        common::assert_same_student(images.model(), features.model());
    }
    // Maps that are not the teacher's at this size are refused before anything runs.
    let x = noise(&[2, 3, 64, 64], 1, 1.0);
    let [l1, l2, l3] = features.teacher_features(&x).unwrap().0;
    let before = common::student_tensors(features.model());
    for wrong in [
        [l1.narrow(0, 0, 1).unwrap(), l2.clone(), l3.clone()],
        [l2.clone(), l2.clone(), l3.clone()],
        [l1.clone(), l2.clone(), l2.clone()],
    ] {
        let err = features
            .step_from_teacher(FeatureMaps(wrong), &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("teacher features"), "{err}");
    }
    assert_eq!(before, common::student_tensors(features.model()));
}

#[test]
fn a_refused_loss_updates_nothing() {
    let mut trainer = Trainer::new(model(Backbone::Resnet18, 64), AdamConfig::anomalib());
    let before = common::student_tensors(trainer.model());
    let x = noise(&[2, 3, 64, 64], 5, 2.0);
    let refuse = &mut |_: &rd_model::Loss| Err(rd_model::ModelError::Training("no".into()));
    assert!(trainer.step_checked(&x, refuse).is_err());
    for (name, after) in common::student_tensors(trainer.model()) {
        // The forward pass moves the running statistics; nothing else may change.
        if !name.contains("running_") {
            assert_eq!(before[&name], after, "{name} changed");
        }
    }
    assert!(trainer.optimizer().state_tensors().unwrap().is_empty());
}
