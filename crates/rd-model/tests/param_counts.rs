//! Parameter counts against SPEC §2.9 (confirmed by exporting anomalib 2.7.0's model).

use candle_core::Device;
use rd_backbone::{Backbone, ParamStore, Teacher};
use rd_model::{Student, Variant};

fn count(store: &ParamStore, prefix: &str) -> usize {
    store
        .tensors()
        .iter()
        .filter(|(n, _)| n.starts_with(prefix) && rd_backbone::params::is_parameter(n))
        .map(|(_, t)| t.elem_count())
        .sum()
}

#[test]
fn counts_match_anomalib_for_every_backbone() {
    // (backbone, teacher up to layer3, OCBE incl. conv4/bn4, of which conv4/bn4, decoder)
    let table = [
        (
            Backbone::Resnet18,
            2_782_784,
            12_205_312,
            525_312,
            3_703_168,
        ),
        (
            Backbone::Resnet34,
            8_170_304,
            12_205_312,
            525_312,
            5_770_624,
        ),
        (
            Backbone::Resnet50,
            8_543_296,
            39_222_272,
            8_392_704,
            15_821_824,
        ),
        (
            Backbone::WideResnet50_2,
            24_862_528,
            39_222_272,
            8_392_704,
            24_917_504,
        ),
    ];
    let dev = Device::Cpu;
    for (backbone, teacher, ocbe, unused, decoder) in table {
        let (_, t) = Teacher::seeded(backbone, 0, &dev).unwrap();
        assert_eq!(t.parameter_count(), teacher, "{backbone} teacher");
        let (_, s) = Student::seeded(backbone, Variant::Anomalib, 0, &dev).unwrap();
        assert_eq!(count(&s, "bottleneck."), ocbe, "{backbone} OCBE");
        assert_eq!(
            count(&s, "bottleneck.conv4.") + count(&s, "bottleneck.bn4."),
            unused,
            "{backbone} conv4/bn4"
        );
        assert_eq!(count(&s, "decoder."), decoder, "{backbone} decoder");
        assert_eq!(s.parameter_count(), ocbe + decoder, "{backbone} student");
    }
}

#[test]
fn official_variant_counts() {
    let dev = Device::Cpu;
    let (_, s) = Student::seeded(Backbone::WideResnet50_2, Variant::Official, 0, &dev).unwrap();
    assert_eq!(count(&s, "bottleneck."), 67_277_824);
    let (_, s) = Student::seeded(Backbone::Resnet34, Variant::Official, 0, &dev).unwrap();
    assert_eq!(count(&s, "bottleneck."), 16_925_952);
}
