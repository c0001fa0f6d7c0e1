//! VisA: the raw release with its split file, or anomalib's converted `visa_pytorch` layout.
//!
//! Raw release (`VisA_20220922.tar`):
//!
//! ```text
//! <root>/split_csv/1cls.csv                 object,split,label,image,mask
//! <root>/<object>/Data/Images/Normal/0000.JPG
//! <root>/<object>/Data/Images/Anomaly/000.JPG
//! <root>/<object>/Data/Masks/Anomaly/000.png
//! ```
//!
//! Paths in the CSV are relative to `<root>`; `split` is `train` or `test`, `label` is `normal`
//! or `anomaly`. anomalib's converted layout, `visa_pytorch/<object>/{train/good, test/good,
//! test/bad, ground_truth/bad}`, has the MVTec shape and is read with [`super::mvtec`].

use std::path::{Path, PathBuf};

use super::{mvtec, stem, Label, Sample, Splits};
use crate::error::{DatasetError, Result};

/// Location of the one-class split file inside the raw release.
pub const SPLIT_CSV: &str = "split_csv/1cls.csv";

/// Name of anomalib's converted folder inside the raw root.
pub const CONVERTED_DIR: &str = "visa_pytorch";

/// Which VisA layout a root holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisaLayout {
    /// The raw release; the path is its split CSV.
    Raw(PathBuf),
    /// anomalib's converted layout; the path is the folder holding one folder per object.
    Converted(PathBuf),
}

/// Detects the layout under `root`: a split CSV means raw; otherwise `root/visa_pytorch` or
/// `root` itself is taken as the converted layout.
pub fn detect(root: &Path) -> Result<VisaLayout> {
    if !root.is_dir() {
        return Err(DatasetError::MissingFolder {
            path: root.to_path_buf(),
            what: "a VisA root (with split_csv/1cls.csv or visa_pytorch/)".into(),
        });
    }
    let csv = root.join(SPLIT_CSV);
    if csv.is_file() {
        return Ok(VisaLayout::Raw(csv));
    }
    let converted = root.join(CONVERTED_DIR);
    if converted.is_dir() {
        return Ok(VisaLayout::Converted(converted));
    }
    Ok(VisaLayout::Converted(root.to_path_buf()))
}

/// The objects available under `root` (from the CSV for the raw release), sorted.
pub fn objects(root: &Path) -> Result<Vec<String>> {
    match detect(root)? {
        VisaLayout::Raw(csv) => {
            let rows = read_split_csv(&csv)?;
            let mut objs: Vec<String> = rows.into_iter().map(|r| r.object).collect();
            objs.sort();
            objs.dedup();
            Ok(objs)
        }
        VisaLayout::Converted(dir) => mvtec::categories(&dir),
    }
}

/// Lists object `object` of the VisA dataset at `root`, whichever layout it has.
pub fn load(root: &Path, object: &str) -> Result<Splits> {
    match detect(root)? {
        VisaLayout::Raw(csv) => load_raw(root, &csv, object),
        VisaLayout::Converted(dir) => mvtec::load(&dir, object),
    }
}

/// One row of the split CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    line: usize,
    object: String,
    split: String,
    label: String,
    image: String,
    mask: String,
}

/// Lists `object` from the raw release at `root` using the split file `csv`.
pub fn load_raw(root: &Path, csv: &Path, object: &str) -> Result<Splits> {
    let rows = read_split_csv(csv)?;
    let mut splits = Splits::default();
    let mut found = false;
    for row in rows.iter().filter(|r| r.object == object) {
        found = true;
        let csv_err = |message: String| DatasetError::Csv {
            path: csv.to_path_buf(),
            line: row.line,
            message,
        };
        let image = root.join(&row.image);
        if !image.is_file() {
            return Err(csv_err(format!(
                "image {} does not exist; is the dataset fully extracted?",
                image.display()
            )));
        }
        let label = match row.label.to_ascii_lowercase().as_str() {
            "normal" | "good" => Label::Normal,
            "anomaly" | "anomalous" | "abnormal" | "bad" => Label::Anomalous,
            other => {
                return Err(csv_err(format!(
                    "label {other:?} is neither \"normal\" nor \"anomaly\""
                )))
            }
        };
        let mask = if label == Label::Anomalous {
            let expected = if row.mask.is_empty() {
                root.join(object)
                    .join("Data/Masks/Anomaly")
                    .join(format!("{}.png", stem(&image)))
            } else {
                root.join(&row.mask)
            };
            if row.mask.is_empty() || !expected.is_file() {
                return Err(DatasetError::MissingMask { image, expected });
            }
            Some(expected)
        } else {
            None
        };
        let sample = Sample {
            image,
            label,
            mask,
            defect: if label == Label::Anomalous {
                "bad"
            } else {
                "good"
            }
            .into(),
        };
        match row.split.to_ascii_lowercase().as_str() {
            "train" => splits.train.push(sample),
            "test" => splits.test.push(sample),
            "val" | "validation" => splits.validation.get_or_insert_with(Vec::new).push(sample),
            other => {
                return Err(csv_err(format!(
                    "split {other:?} is not \"train\" or \"test\""
                )))
            }
        }
    }
    if !found {
        let mut available: Vec<String> = rows.into_iter().map(|r| r.object).collect();
        available.sort();
        available.dedup();
        return Err(DatasetError::CategoryNotFound {
            root: csv.to_path_buf(),
            category: object.to_string(),
            available,
        });
    }
    if splits.train.is_empty() {
        return Err(DatasetError::Csv {
            path: csv.to_path_buf(),
            line: 0,
            message: format!("object {object:?} has no training images"),
        });
    }
    for list in [&mut splits.train, &mut splits.test] {
        list.sort_by(|a, b| a.image.cmp(&b.image));
    }
    Ok(splits)
}

fn read_split_csv(csv: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(csv).map_err(|e| DatasetError::io(csv, e))?;
    let err = |line: usize, message: String| DatasetError::Csv {
        path: csv.to_path_buf(),
        line,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| err(0, "the split file is empty".into()))?;
    let header: Vec<String> = split_csv_line(header.trim_start_matches('\u{feff}'))
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            err(
                1,
                format!("missing column {name:?} (expected object,split,label,image,mask)"),
            )
        })
    };
    let (c_obj, c_split, c_label, c_image) =
        (col("object")?, col("split")?, col("label")?, col("image")?);
    let c_mask = header.iter().position(|h| h == "mask");
    let mut rows = Vec::new();
    for (line, text) in lines {
        let fields = split_csv_line(text);
        let get = |c: usize| fields.get(c).map(|s| s.trim().to_string());
        let need = |c: usize| {
            get(c)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(line, format!("column {} is empty or missing", header[c])))
        };
        rows.push(Row {
            line,
            object: need(c_obj)?,
            split: need(c_split)?,
            label: need(c_label)?,
            image: need(c_image)?,
            mask: c_mask.and_then(get).unwrap_or_default(),
        });
    }
    Ok(rows)
}

/// Splits one CSV line, honouring double quotes (`""` inside quotes is a literal quote).
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_line_splitting() {
        assert_eq!(split_csv_line("a,b,,c"), ["a", "b", "", "c"]);
        assert_eq!(split_csv_line("\"a,b\",\"x\"\"y\",z"), ["a,b", "x\"y", "z"]);
    }
}
