//! Metrics tables, with the paper's and anomalib's published MVTec AD numbers beside ours.

use rd_model::evaluate::Metrics;

/// Published numbers for one MVTec AD category (SPEC §6): the paper's (WRN-50, image AUROC,
/// pixel AUROC, PRO; per-category values recalled, their means verified) and anomalib's README
/// (WRN-50, image AUROC, pixel AUROC, image F1), as fractions.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Paper: image AUROC, pixel AUROC, PRO.
    pub paper: [f64; 3],
    /// anomalib: image AUROC, pixel AUROC, image F1.
    pub anomalib: [f64; 3],
}

const MVTEC: [(&str, Published); 15] = [
    (
        "carpet",
        Published {
            paper: [0.989, 0.989, 0.970],
            anomalib: [0.984, 0.988, 0.977],
        },
    ),
    (
        "grid",
        Published {
            paper: [1.000, 0.993, 0.976],
            anomalib: [1.000, 0.992, 1.000],
        },
    ),
    (
        "leather",
        Published {
            paper: [1.000, 0.994, 0.991],
            anomalib: [1.000, 0.991, 1.000],
        },
    ),
    (
        "tile",
        Published {
            paper: [0.993, 0.956, 0.906],
            anomalib: [1.000, 0.954, 0.994],
        },
    ),
    (
        "wood",
        Published {
            paper: [0.992, 0.953, 0.909],
            anomalib: [0.997, 0.947, 0.992],
        },
    ),
    (
        "bottle",
        Published {
            paper: [1.000, 0.987, 0.966],
            anomalib: [1.000, 0.984, 0.984],
        },
    ),
    (
        "cable",
        Published {
            paper: [0.950, 0.974, 0.910],
            anomalib: [0.966, 0.964, 0.930],
        },
    ),
    (
        "capsule",
        Published {
            paper: [0.963, 0.987, 0.958],
            anomalib: [0.974, 0.987, 0.982],
        },
    ),
    (
        "hazelnut",
        Published {
            paper: [0.999, 0.989, 0.955],
            anomalib: [1.000, 0.988, 1.000],
        },
    ),
    (
        "metal_nut",
        Published {
            paper: [1.000, 0.973, 0.923],
            anomalib: [1.000, 0.969, 1.000],
        },
    ),
    (
        "pill",
        Published {
            paper: [0.966, 0.982, 0.964],
            anomalib: [0.972, 0.975, 0.967],
        },
    ),
    (
        "screw",
        Published {
            paper: [0.970, 0.996, 0.982],
            anomalib: [0.985, 0.996, 0.963],
        },
    ),
    (
        "toothbrush",
        Published {
            paper: [0.995, 0.991, 0.945],
            anomalib: [0.953, 0.991, 0.952],
        },
    ),
    (
        "transistor",
        Published {
            paper: [0.967, 0.925, 0.780],
            anomalib: [0.970, 0.893, 0.927],
        },
    ),
    (
        "zipper",
        Published {
            paper: [0.985, 0.982, 0.954],
            anomalib: [0.978, 0.984, 0.975],
        },
    ),
];

/// The published numbers for an MVTec AD category name (the last path component of `name`).
pub fn published(name: &str) -> Option<Published> {
    let category = name.rsplit(['/', '\\']).next().unwrap_or(name);
    MVTEC.iter().find(|(c, _)| *c == category).map(|(_, p)| *p)
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

/// A Markdown table of metrics per dataset, with published numbers where known.
pub fn metrics_table(rows: &[(String, Metrics)]) -> String {
    let mut out = String::from(
        "| data | images | image AUROC | pixel AUROC | AUPRO@0.3 | image F1 | pixel F1 | paper (img / px / PRO) | anomalib (img / px / F1) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, m) in rows {
        let (paper, anomalib) = match published(name) {
            Some(p) => (
                format!("{:.3} / {:.3} / {:.3}", p.paper[0], p.paper[1], p.paper[2]),
                format!(
                    "{:.3} / {:.3} / {:.3}",
                    p.anomalib[0], p.anomalib[1], p.anomalib[2]
                ),
            ),
            None => ("–".into(), "–".into()),
        };
        out.push_str(&format!(
            "| {name} | {} ({} defective) | {} | {} | {} | {:.3} | {} | {paper} | {anomalib} |\n",
            m.images,
            m.anomalous_images,
            cell(m.image_auroc),
            cell(m.pixel_auroc),
            cell(m.pixel_aupro),
            m.image_f1,
            cell(m.pixel_f1),
        ));
    }
    out
}

/// Prints [`metrics_table`] on stdout.
pub fn print_metrics(rows: &[(String, Metrics)]) {
    print!("{}", metrics_table(rows));
}
