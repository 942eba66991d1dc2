//! DICOM for snapshots: the frame as an Ultrasound Image object (`image.dcm`, with the ruler's or
//! the configuration's scale as a US region calibration), the overlay as a second one
//! (`overlay.dcm`, RGB), the mask as a Segmentation ([`seg`], `seg.dcm`) and the numbers as a
//! TID 1500 measurement report ([`sr`], `sr.dcm`), sent in that order (the report last, after
//! what it references). Identity comes from an [`Exam`] (`SetExam` on D-Bus); without one the
//! files say `ANONYMOUS` and carry nothing personal. UIDs are `2.25.` + a random UUID. The
//! C-STORE client is [`net`], the spool that sends snapshots automatically [`spool`].
//! Must not depend on the daemon, D-Bus or HTTP: it turns values into files.

pub mod net;
pub mod seg;
pub mod spool;
pub mod sr;
pub mod worklist;

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::frame::GrayImage;
use crate::postprocess::overlay::RgbImage;
use crate::publish::measurement::Measurement;

/// The files a snapshot holds, in the order they are sent.
pub const FILES: [&str; 4] = ["image.dcm", "overlay.dcm", "seg.dcm", "sr.dcm"];
/// Patient name and id when no exam was set.
pub const ANONYMOUS: &str = "ANONYMOUS";
/// Our implementation class UID (a fixed UUID-derived UID) and version name.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.190148734335392614367219402587066913329";
pub const IMPLEMENTATION_VERSION: &str = concat!("POCUSD_", env!("CARGO_PKG_VERSION"));
/// The coding scheme of our own concept names (a private scheme, "99" prefix per PS3.16).
const SCHEME: &str = "99POCUSD";

/// What goes wrong writing or reading DICOM.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{field} {value:?} is not allowed: {reason}")]
    BadValue {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot build the DICOM object {file}: {message}")]
    Build { file: String, message: String },
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

/// A new UID under the UUID root `2.25.` (PS3.5 B.2): a random 128-bit UUID (version 4) in
/// decimal.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if random.is_err() {
        // No /dev/urandom: time, process and a counter, hashed (unique, if not unpredictable).
        use std::hash::{BuildHasher, Hasher};
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for half in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(crate::clock::realtime_us());
            h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// This machine's digest: sha256 of `/etc/machine-id` (else the host name) with a fixed prefix,
/// so the device identifiers below are stable across restarts and differ between carts without
/// revealing the machine id.
fn machine_digest() -> [u8; 32] {
    use sha2::Digest;
    let id = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .unwrap_or_default();
    sha2::Sha256::digest(format!("pocusd device\n{}", id.trim()).as_bytes()).into()
}

/// The Device Observer UID of the reports: a name-based UUID (version 8) of this machine under
/// `2.25.`, the same for every report of this cart.
pub fn device_observer_uid() -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&machine_digest()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// The Device Serial Number of derived objects: 12 hex digits of this machine's digest.
pub fn device_serial() -> String {
    machine_digest()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The order an exam answers, from a Modality Worklist item: what the Request Attributes
/// Sequence (images, Segmentation) and the Referenced Request Sequence (report) carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Order {
    pub requested_procedure_id: String,
    pub requested_procedure_description: String,
    pub step_id: String,
    pub step_description: String,
}

/// Who and what the files belong to: set by `SetExam` or a worklist item, else anonymous. Each
/// exam is one study (its own Study Instance UID, or the worklist's) with one image series, one
/// report series and one segmentation series.
#[derive(Debug, Clone, PartialEq)]
pub struct Exam {
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    /// YYYYMMDD and M / F / O, from the worklist.
    pub birth_date: Option<String>,
    pub sex: Option<String>,
    pub accession: Option<String>,
    /// The worklist item's order (`None`: set by hand or anonymous).
    pub order: Option<Order>,
    pub study_uid: String,
    pub image_series_uid: String,
    pub sr_series_uid: String,
    pub seg_series_uid: String,
    /// When the exam started, CLOCK_REALTIME µs (the study date and time).
    pub started_us: i64,
    /// Snapshots numbered in this exam so far (see [`Exam::next_snapshot`]).
    pub snapshots: u32,
}

fn check_text(field: &'static str, v: &str, max: usize) -> Result<(), DicomError> {
    let bad = |reason: String| DicomError::BadValue {
        field,
        value: v.to_string(),
        reason,
    };
    if v.chars().count() > max {
        return Err(bad(format!("at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("no control characters or backslashes".into()));
    }
    Ok(())
}

impl Exam {
    /// Numbers the next snapshot of this exam (1, 2, ...) and returns it with a copy of the exam
    /// to write it with, so a caller holding the exam behind a lock releases it before any I/O.
    pub fn next_snapshot(&mut self) -> (Exam, u32) {
        self.snapshots += 1;
        (self.clone(), self.snapshots)
    }

    /// The exam without identity, started at `now_us`.
    pub fn anonymous(now_us: i64) -> Self {
        Self {
            patient_id: None,
            patient_name: None,
            birth_date: None,
            sex: None,
            accession: None,
            order: None,
            study_uid: new_uid(),
            image_series_uid: new_uid(),
            sr_series_uid: new_uid(),
            seg_series_uid: new_uid(),
            started_us: now_us,
            snapshots: 0,
        }
    }

    /// A new exam (a new study) for this patient; empty strings mean "not given". Patient name
    /// in DICOM form (`FAMILY^GIVEN`), at most 64 characters like the id; accession at most 16.
    pub fn new(
        patient_id: &str,
        patient_name: &str,
        accession: &str,
        now_us: i64,
    ) -> Result<Self, DicomError> {
        let (id, name, acc) = (patient_id.trim(), patient_name.trim(), accession.trim());
        check_text("patient_id", id, 64)?;
        check_text("patient_name", name, 64)?;
        check_text("accession", acc, 16)?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Self {
            patient_id: some(id),
            patient_name: some(name),
            accession: some(acc),
            ..Self::anonymous(now_us)
        })
    }

    /// The exam of a worklist item: its patient, accession number, Study Instance UID (a new one
    /// when the item has none) and order. A value DICOM cannot carry is refused with its name,
    /// never shortened or replaced.
    pub fn from_worklist(item: &worklist::WorklistItem, now_us: i64) -> Result<Self, DicomError> {
        let mut e = Self::new(
            &item.patient_id,
            &item.patient_name,
            &item.accession_number,
            now_us,
        )?;
        let bad = |field: &'static str, value: &str, reason: &str| DicomError::BadValue {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let date = item.patient_birth_date.trim();
        if !date.is_empty() {
            if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("PatientBirthDate", date, "not a date YYYYMMDD"));
            }
            e.birth_date = Some(date.to_string());
        }
        let sex = item.patient_sex.trim();
        if !sex.is_empty() {
            if !matches!(sex, "M" | "F" | "O") {
                return Err(bad("PatientSex", sex, "not M, F or O"));
            }
            e.sex = Some(sex.to_string());
        }
        let uid = item.study_instance_uid.trim();
        if !uid.is_empty() {
            let valid = uid.len() <= 64
                && uid.split('.').all(|c| {
                    !c.is_empty()
                        && c.bytes().all(|b| b.is_ascii_digit())
                        && (c == "0" || !c.starts_with('0'))
                });
            if !valid {
                return Err(bad(
                    "StudyInstanceUID",
                    uid,
                    "not a valid UID (digits and dots, at most 64 characters)",
                ));
            }
            e.study_uid = uid.to_string();
        }
        for (field, v, max) in [
            ("RequestedProcedureID", &item.requested_procedure_id, 16),
            (
                "RequestedProcedureDescription",
                &item.requested_procedure_description,
                64,
            ),
            (
                "ScheduledProcedureStepID",
                &item.scheduled_procedure_step_id,
                16,
            ),
            (
                "ScheduledProcedureStepDescription",
                &item.scheduled_procedure_step_description,
                64,
            ),
        ] {
            check_text(field, v, max)?;
        }
        e.order = Some(Order {
            requested_procedure_id: item.requested_procedure_id.clone(),
            requested_procedure_description: item.requested_procedure_description.clone(),
            step_id: item.scheduled_procedure_step_id.clone(),
            step_description: item.scheduled_procedure_step_description.clone(),
        });
        Ok(e)
    }

    /// The Request Attributes Sequence of the images and the Segmentation (empty without an
    /// order).
    fn request_attributes(&self) -> Option<DataElement<InMemDicomObject>> {
        let o = self.order.as_ref()?;
        let mut item = InMemDicomObject::new_empty();
        if let Some(a) = &self.accession {
            item.put(el(tags::ACCESSION_NUMBER, VR::SH, a.as_str()));
        }
        item.put(el(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            self.study_uid.as_str(),
        ));
        for (tag, vr, v) in [
            (
                tags::REQUESTED_PROCEDURE_ID,
                VR::SH,
                &o.requested_procedure_id,
            ),
            (
                tags::REQUESTED_PROCEDURE_DESCRIPTION,
                VR::LO,
                &o.requested_procedure_description,
            ),
            (tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH, &o.step_id),
            (
                tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
                VR::LO,
                &o.step_description,
            ),
        ] {
            if !v.is_empty() {
                item.put(el(tag, vr, v.as_str()));
            }
        }
        Some(seq(tags::REQUEST_ATTRIBUTES_SEQUENCE, vec![item]))
    }

    /// The report's Referenced Request Sequence (empty without an order).
    fn referenced_request(&self) -> Option<DataElement<InMemDicomObject>> {
        let o = self.order.as_ref()?;
        let text = |tag, vr, v: &str| {
            if v.is_empty() {
                empty(tag, vr)
            } else {
                el(tag, vr, v)
            }
        };
        Some(seq(
            tags::REFERENCED_REQUEST_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid.as_str()),
                seq(tags::REFERENCED_STUDY_SEQUENCE, vec![]),
                text(
                    tags::ACCESSION_NUMBER,
                    VR::SH,
                    self.accession.as_deref().unwrap_or(""),
                ),
                text(
                    tags::REQUESTED_PROCEDURE_ID,
                    VR::SH,
                    &o.requested_procedure_id,
                ),
                text(
                    tags::REQUESTED_PROCEDURE_DESCRIPTION,
                    VR::LO,
                    &o.requested_procedure_description,
                ),
                seq(tags::REQUESTED_PROCEDURE_CODE_SEQUENCE, vec![]),
                empty(tags::PLACER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST, VR::LO),
                empty(tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST, VR::LO),
            ])],
        ))
    }
}

/// DICOM date and time (UTC) of a CLOCK_REALTIME time in µs.
fn da_tm(us: i64) -> (String, String) {
    let (y, mo, d, h, mi, s) = crate::clock::utc_parts(us.div_euclid(1_000_000));
    let frac = us.rem_euclid(1_000_000);
    (
        format!("{y:04}{mo:02}{d:02}"),
        format!("{h:02}{mi:02}{s:02}.{frac:06}"),
    )
}

fn el(tag: dicom_core::Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn empty(tag: dicom_core::Tag, vr: VR) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

fn seq(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A code triple: value, scheme designator, meaning.
type Code<'a> = (&'a str, &'a str, &'a str);

/// A Referenced SOP Class / Instance UID item.
fn sop_ref(class: &str, uid: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, uid),
    ])
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// A new object of `sop_class` with a new SOP instance UID and the patient, study, equipment and
/// SOP common attributes the three objects share; returns it with its UID.
fn new_object(exam: &Exam, sop_class: &str, content_us: i64) -> (InMemDicomObject, String) {
    let (study_date, study_time) = da_tm(exam.started_us);
    let (date, time) = da_tm(content_us);
    let name = exam.patient_name.as_deref().unwrap_or(ANONYMOUS);
    let id = exam.patient_id.as_deref().unwrap_or(ANONYMOUS);
    let uid = new_uid();
    let mut obj = InMemDicomObject::new_empty();
    for e in [
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::SOP_CLASS_UID, VR::UI, sop_class),
        el(tags::SOP_INSTANCE_UID, VR::UI, uid.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str()),
        el(tags::PATIENT_NAME, VR::PN, name),
        el(tags::PATIENT_ID, VR::LO, id),
        match &exam.birth_date {
            Some(d) => el(tags::PATIENT_BIRTH_DATE, VR::DA, d.as_str()),
            None => empty(tags::PATIENT_BIRTH_DATE, VR::DA),
        },
        match &exam.sex {
            Some(x) => el(tags::PATIENT_SEX, VR::CS, x.as_str()),
            None => empty(tags::PATIENT_SEX, VR::CS),
        },
        el(tags::STUDY_INSTANCE_UID, VR::UI, exam.study_uid.as_str()),
        el(tags::STUDY_DATE, VR::DA, study_date.as_str()),
        el(tags::STUDY_TIME, VR::TM, study_time.as_str()),
        empty(tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        // The study's start, UTC (SH, 14 characters): an id a DICOMDIR can list.
        el(
            tags::STUDY_ID,
            VR::SH,
            format!("{}{}", study_date, &study_time[..6]).as_str(),
        ),
        match &exam.accession {
            Some(a) => el(tags::ACCESSION_NUMBER, VR::SH, a.as_str()),
            None => empty(tags::ACCESSION_NUMBER, VR::SH),
        },
        el(tags::MANUFACTURER, VR::LO, "pocusd"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "pocusd"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
    ] {
        obj.put(e);
    }
    if let Some(o) = exam
        .order
        .as_ref()
        .filter(|o| !o.requested_procedure_description.is_empty())
    {
        obj.put(el(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            o.requested_procedure_description.as_str(),
        ));
    }
    // The order: Request Attributes (General Series of the images and the Segmentation), or the
    // report's Referenced Request.
    let request = if sop_class == uids::COMPREHENSIVE3_DSR_STORAGE {
        exam.referenced_request()
    } else {
        exam.request_attributes()
    };
    if let Some(r) = request {
        obj.put(r);
    }
    (obj, uid)
}

/// An Ultrasound Image object of one 8-bit frame (grey, or RGB when `samples` is 3).
#[allow(clippy::too_many_arguments)]
fn us_image(
    exam: &Exam,
    instance: u32,
    series_number: u32,
    width: usize,
    height: usize,
    samples: u16,
    pixels: &[u8],
    record: &Measurement,
    derived: bool,
) -> (InMemDicomObject, String) {
    let (mut o, uid) = new_object(exam, uids::ULTRASOUND_IMAGE_STORAGE, record.timestamp_us);
    let (date, time) = da_tm(record.timestamp_us);
    let image_type = if derived {
        "DERIVED\\SECONDARY"
    } else {
        "ORIGINAL\\PRIMARY"
    };
    let mut px = pixels.to_vec();
    if px.len() % 2 == 1 {
        px.push(0);
    }
    for e in [
        el(tags::MODALITY, VR::CS, "US"),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            exam.image_series_uid.as_str(),
        ),
        el(
            tags::SERIES_NUMBER,
            VR::IS,
            series_number.to_string().as_str(),
        ),
        el(tags::SERIES_DESCRIPTION, VR::LO, "pocusd snapshots"),
        // Type 2C for US: dciodvfy requires it; empty, as the side is not known to the daemon.
        empty(tags::LATERALITY, VR::CS),
        el(tags::INSTANCE_NUMBER, VR::IS, instance.to_string().as_str()),
        empty(tags::PATIENT_ORIENTATION, VR::CS),
        el(
            tags::ACQUISITION_DATE_TIME,
            VR::DT,
            format!("{date}{time}").as_str(),
        ),
        el(tags::IMAGE_TYPE, VR::CS, image_type),
        el(
            tags::IMAGE_COMMENTS,
            VR::LT,
            if derived {
                "pocusd overlay: the model's mask and measurements drawn over the frame"
            } else {
                "pocusd snapshot: the frame as captured"
            },
        ),
        el(
            tags::BURNED_IN_ANNOTATION,
            VR::CS,
            if derived { "YES" } else { "NO" },
        ),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SAMPLES_PER_PIXEL, VR::US, samples),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            if samples == 3 { "RGB" } else { "MONOCHROME2" },
        ),
        el(tags::ROWS, VR::US, height as u16),
        el(tags::COLUMNS, VR::US, width as u16),
        el(tags::BITS_ALLOCATED, VR::US, 8u16),
        el(tags::BITS_STORED, VR::US, 8u16),
        el(tags::HIGH_BIT, VR::US, 7u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
    ] {
        o.put(e);
    }
    if samples == 3 {
        o.put(el(tags::PLANAR_CONFIGURATION, VR::US, 0u16));
    }
    if let Some((x_mm, y_mm)) = record.calibration.mm_per_px {
        // The US region calibration: the whole frame as one 2D tissue region, in cm per pixel.
        let region = InMemDicomObject::from_element_iter([
            el(tags::REGION_SPATIAL_FORMAT, VR::US, 1u16),
            el(tags::REGION_DATA_TYPE, VR::US, 1u16),
            el(tags::REGION_FLAGS, VR::UL, 0u32),
            el(tags::REGION_LOCATION_MIN_X0, VR::UL, 0u32),
            el(tags::REGION_LOCATION_MIN_Y0, VR::UL, 0u32),
            el(
                tags::REGION_LOCATION_MAX_X1,
                VR::UL,
                width.saturating_sub(1) as u32,
            ),
            el(
                tags::REGION_LOCATION_MAX_Y1,
                VR::UL,
                height.saturating_sub(1) as u32,
            ),
            el(tags::PHYSICAL_UNITS_X_DIRECTION, VR::US, 3u16),
            el(tags::PHYSICAL_UNITS_Y_DIRECTION, VR::US, 3u16),
            el(tags::PHYSICAL_DELTA_X, VR::FD, x_mm / 10.0),
            el(tags::PHYSICAL_DELTA_Y, VR::FD, y_mm / 10.0),
        ]);
        o.put(seq(tags::SEQUENCE_OF_ULTRASOUND_REGIONS, vec![region]));
    }
    o.put(el(tags::PIXEL_DATA, VR::OB, px));
    (o, uid)
}

/// A decimal string of at most 16 characters (VR DS).
fn ds(v: f64) -> String {
    for prec in (0..=6).rev() {
        let s = format!("{v:.prec$}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.3e}")
}

/// A code value (VR SH, at most 16 characters) for a measurement key: the key itself when it
/// fits, else its start and a hash of the whole.
fn short_code(key: &str) -> String {
    if key.len() <= 16 {
        return key.to_string();
    }
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}{:05x}", &key[..11], h & 0xfffff)
}

fn write(obj: InMemDicomObject, path: &Path) -> Result<(), DicomError> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let obj = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION),
        )
        .map_err(|e| DicomError::Build {
            file,
            message: e.to_string(),
        })?;
    obj.write_to_file(path).map_err(|e| DicomError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The file an accepted review label is written to, beside the snapshot's objects.
pub const LABEL_FILE: &str = "label-seg.dcm";

/// Writes an accepted review label as a Segmentation with algorithm type MANUAL
/// ([`LABEL_FILE`] in the snapshot folder `dir`): derived from the snapshot's `image.dcm`, in
/// its patient, study and order, a series of its own. `mask`: the label over the whole frame.
pub fn write_label_segmentation(
    dir: &Path,
    task: crate::model::Task,
    mask: &GrayImage,
    now_us: i64,
) -> Result<PathBuf, DicomError> {
    let image_path = dir.join(FILES[0]);
    let image = dicom_object::open_file(&image_path).map_err(|e| DicomError::Build {
        file: LABEL_FILE.into(),
        message: format!("cannot read {}: {e}", image_path.display()),
    })?;
    let text = |tag| {
        image
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let (rows, columns) = (text(tags::ROWS), text(tags::COLUMNS));
    if (rows, columns) != (mask.height().to_string(), mask.width().to_string()) {
        return Err(DicomError::BadValue {
            field: "label",
            value: format!("{}x{}", mask.width(), mask.height()),
            reason: "a Segmentation's frames have the source image's size".into(),
        });
    }
    let mut exam = Exam::anonymous(now_us);
    exam.image_series_uid = text(tags::SERIES_INSTANCE_UID);
    let source_uid = text(tags::SOP_INSTANCE_UID);
    let segment = seg::Segment {
        task,
        mask,
        algorithm_name: "",
        algorithm_version: "",
    };
    let (mut o, _) = seg::segmentation(
        &exam,
        &seg::SegInput {
            segments: std::slice::from_ref(&segment),
            algorithm: seg::SegmentAlgorithm::Manual,
            source_uid: &source_uid,
            content_us: now_us,
            instance: 1,
        },
    );
    // The snapshot's patient, study and order, as they are in its image.
    for tag in [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::PATIENT_SEX,
        tags::STUDY_INSTANCE_UID,
        tags::STUDY_DATE,
        tags::STUDY_TIME,
        tags::STUDY_ID,
        tags::STUDY_DESCRIPTION,
        tags::ACCESSION_NUMBER,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::REQUEST_ATTRIBUTES_SEQUENCE,
    ] {
        if let Ok(e) = image.element(tag) {
            o.put(e.clone());
        }
    }
    o.put(el(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "pocusd accepted labels",
    ));
    let path = dir.join(LABEL_FILE);
    write(o, &path)?;
    Ok(path)
}

/// What a snapshot's DICOM files are made of.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotInput<'a> {
    pub frame: &'a GrayImage,
    /// The model's mask over the whole frame (>127: the structure).
    pub mask: &'a GrayImage,
    pub overlay: &'a RgbImage,
    pub record: &'a Measurement,
    /// The extra models' masks by task (each over the whole frame).
    pub extra_masks: &'a [(crate::model::Task, GrayImage)],
    /// The primary model (file name and sha256) and the extra models by task.
    pub primary: &'a sr::Algorithm,
    pub extras: &'a [(crate::model::Task, sr::Algorithm)],
}

/// Writes [`FILES`] (`image.dcm`, `overlay.dcm`, `seg.dcm`, `sr.dcm`) into `dir` as snapshot
/// number `n` (from 1) of `exam` (see [`Exam::next_snapshot`]). Returns the paths.
pub fn write_snapshot(
    dir: &Path,
    exam: &Exam,
    n: u32,
    s: SnapshotInput<'_>,
) -> Result<Vec<PathBuf>, DicomError> {
    for (w, h) in [
        (s.frame.width(), s.frame.height()),
        (s.overlay.width, s.overlay.height),
    ] {
        if w == 0 || h == 0 || w > u16::MAX as usize || h > u16::MAX as usize {
            return Err(DicomError::BadValue {
                field: "image size",
                value: format!("{w}x{h}"),
                reason: "DICOM images have 1 to 65535 rows and columns".into(),
            });
        }
    }
    if s.overlay.data.len() != s.overlay.width * s.overlay.height * 3 {
        return Err(DicomError::BadValue {
            field: "overlay",
            value: format!("{} bytes", s.overlay.data.len()),
            reason: "not width x height x 3".into(),
        });
    }
    for mask in std::iter::once(s.mask).chain(s.extra_masks.iter().map(|(_, m)| m)) {
        if (mask.width(), mask.height()) != (s.frame.width(), s.frame.height()) {
            return Err(DicomError::BadValue {
                field: "mask",
                value: format!("{}x{}", mask.width(), mask.height()),
                reason: format!(
                    "a Segmentation's frames have the source image's size, {}x{}",
                    s.frame.width(),
                    s.frame.height()
                ),
            });
        }
    }
    let (image, image_uid) = us_image(
        exam,
        2 * n - 1,
        1,
        s.frame.width(),
        s.frame.height(),
        1,
        s.frame.as_slice(),
        s.record,
        false,
    );
    let (overlay, _) = us_image(
        exam,
        2 * n,
        1,
        s.overlay.width,
        s.overlay.height,
        3,
        &s.overlay.data,
        s.record,
        true,
    );
    // The primary's mask, then each extra's that has an algorithm (the model still loaded).
    let mut segments = vec![seg::Segment {
        task: s.record.task,
        mask: s.mask,
        algorithm_name: &s.primary.name,
        algorithm_version: &s.primary.version,
    }];
    for (task, mask) in s.extra_masks {
        if let Some((_, a)) = s.extras.iter().find(|(t, _)| t == task) {
            if *task != s.record.task {
                segments.push(seg::Segment {
                    task: *task,
                    mask,
                    algorithm_name: &a.name,
                    algorithm_version: &a.version,
                });
            }
        }
    }
    let seg_frames: Vec<crate::model::Task> = segments.iter().map(|g| g.task).collect();
    let (segmentation, seg_uid) = seg::segmentation(
        exam,
        &seg::SegInput {
            segments: &segments,
            algorithm: seg::SegmentAlgorithm::Automatic,
            source_uid: &image_uid,
            content_us: s.record.timestamp_us,
            instance: n,
        },
    );
    let report = sr::report(
        exam,
        &sr::ReportInput {
            record: s.record,
            primary: s.primary,
            extras: s.extras,
            image_uid: &image_uid,
            seg_uid: &seg_uid,
            seg_frames: &seg_frames,
            instance: n,
        },
    );
    let mut out = Vec::new();
    for (obj, name) in [image, overlay, segmentation, report]
        .into_iter()
        .zip(FILES)
    {
        let p = dir.join(name);
        write(obj, &p)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of `task` with these numbers, written into `dir` (kept there when the
    /// variable `POCUSD_DICOM_OUT` names a folder: the files the validators are tried on by hand).
    fn snapshot(
        task: crate::model::Task,
        m: crate::postprocess::Measurements,
        name: &str,
    ) -> PathBuf {
        use crate::model::Task;
        use crate::postprocess::quality::{Doubt, Doubts};
        let (w, h) = (96, 64);
        let mut frame = GrayImage::new(w, h);
        let mut mask = GrayImage::new(w, h);
        for (i, p) in frame.as_mut_slice().iter_mut().enumerate() {
            *p = (i % 251) as u8;
        }
        for y in 20..30 {
            for x in 10..80 {
                mask.as_mut_slice()[y * w + x] = 255;
            }
        }
        let overlay = RgbImage {
            width: w,
            height: h,
            data: vec![9; w * h * 3],
        };
        let record = Measurement {
            seq: 7,
            timestamp_us: 1_790_000_000_000_000,
            task,
            width: w,
            height: h,
            roi: crate::frame::Rect::full(w, h),
            measurements: m,
            confidence: 0.9,
            flag: None,
            doubt: [Doubt::NotParallel].into_iter().collect(),
            extra_doubt: vec![(Task::Fascicle, Doubts::NONE)],
            model_sha256: std::sync::Arc::from("ab12"),
            truth: None,
            calibration: Default::default(),
            manual: crate::postprocess::Calibration::None,
            start_id: std::sync::Arc::from("s1"),
        };
        let dir = match std::env::var_os("POCUSD_DICOM_OUT") {
            Some(d) => PathBuf::from(d).join(name),
            None => {
                std::env::temp_dir().join(format!("pocusd-dicom-{}-{name}", std::process::id()))
            }
        };
        std::fs::create_dir_all(&dir).unwrap();
        let exam = Exam::new("P1", "DOE^JANE", "A7", record.timestamp_us).unwrap();
        let primary = sr::Algorithm {
            name: format!("{}.onnx", task.as_str()),
            version: "ab12".into(),
        };
        let extras = [(
            Task::Fascicle,
            sr::Algorithm {
                name: "fascicle.onnx".into(),
                version: "cd34".into(),
            },
        )];
        // The fascicle model's mask: another region.
        let mut fascicles = GrayImage::new(w, h);
        for x in 30..50 {
            fascicles.as_mut_slice()[40 * w + x] = 255;
        }
        let extra_masks = [(Task::Fascicle, fascicles.clone())];
        let files = write_snapshot(
            &dir,
            &exam,
            1,
            SnapshotInput {
                frame: &frame,
                mask: &mask,
                overlay: &overlay,
                record: &record,
                extra_masks: if task == Task::Fascicle {
                    &[]
                } else {
                    &extra_masks
                },
                primary: &primary,
                extras: &extras,
            },
        )
        .unwrap();
        assert_eq!(files.len(), 4);
        // The masks read back from the Segmentation bit for bit, one frame each.
        let seg = dicom_object::open_file(dir.join("seg.dcm")).unwrap();
        let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        let want = if task == Task::Fascicle {
            seg::pack_bits([&mask])
        } else {
            seg::pack_bits([&mask, &fascicles])
        };
        assert_eq!(&bits[..], &want[..]);
        dir
    }

    #[test]
    fn snapshots_hold_image_overlay_segmentation_and_report() {
        use crate::postprocess::Measurements;
        let apo = Measurements {
            thickness_mm: Some(18.25),
            thickness_centre_mm: Some(18.5),
            thickness_px: Some(100.0),
            fascicle_length_mm: Some(61.0),
            pennation_angle_deg: Some(17.5),
            ..Default::default()
        };
        let dir = snapshot(crate::model::Task::Aponeurosis, apo, "aponeurosis");
        let sr = dicom_object::open_file(dir.join("sr.dcm")).unwrap();
        assert_eq!(
            sr.element(tags::SOP_CLASS_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            uids::COMPREHENSIVE3_DSR_STORAGE
        );
        let head = Measurements {
            circumference_mm: Some(180.0),
            area_mm2: Some(2500.0),
            ..Default::default()
        };
        let region = snapshot(crate::model::Task::Region, head, "region");
        let fasc = Measurements {
            fascicle_length_mm: Some(61.0),
            pennation_angle_deg: Some(17.5),
            fascicle_length_spread_mm: Some(4.0),
            ..Default::default()
        };
        let fascicle = snapshot(crate::model::Task::Fascicle, fasc, "fascicle");
        if std::env::var_os("POCUSD_DICOM_OUT").is_none() {
            for d in [dir, region, fascicle] {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }

    #[test]
    fn an_empty_mask_is_still_a_segmentation() {
        let (w, h) = (16, 8);
        let frame = GrayImage::new(w, h);
        let empty = GrayImage::new(w, h);
        let overlay = RgbImage {
            width: w,
            height: h,
            data: vec![0; w * h * 3],
        };
        let record = Measurement {
            seq: 1,
            timestamp_us: 1_790_000_000_000_000,
            task: crate::model::Task::Region,
            width: w,
            height: h,
            roi: crate::frame::Rect::full(w, h),
            measurements: Default::default(),
            confidence: 0.0,
            flag: None,
            doubt: [crate::postprocess::quality::Doubt::NoStructure]
                .into_iter()
                .collect(),
            extra_doubt: vec![],
            model_sha256: std::sync::Arc::from("ab"),
            truth: None,
            calibration: Default::default(),
            manual: crate::postprocess::Calibration::None,
            start_id: std::sync::Arc::from("s"),
        };
        let dir = tempfile::tempdir().unwrap();
        let primary = sr::Algorithm {
            name: "fetal-head.onnx".into(),
            version: "ab".into(),
        };
        write_snapshot(
            dir.path(),
            &Exam::anonymous(0),
            1,
            SnapshotInput {
                frame: &frame,
                mask: &empty,
                overlay: &overlay,
                record: &record,
                extra_masks: &[],
                primary: &primary,
                extras: &[],
            },
        )
        .unwrap();
        let seg = dicom_object::open_file(dir.path().join("seg.dcm")).unwrap();
        let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert_eq!(bits.len(), w * h / 8);
        assert!(bits.iter().all(|&b| b == 0), "an empty frame");
        assert_eq!(
            seg.element(tags::NUMBER_OF_FRAMES)
                .unwrap()
                .to_int::<u32>()
                .unwrap(),
            1
        );
        // The report still says why there is no number.
        let sr = std::fs::read(dir.path().join("sr.dcm")).unwrap();
        let text = String::from_utf8_lossy(&sr);
        assert!(text.contains("no_structure") && text.contains("doubtful"));
    }

    #[test]
    fn uids_are_uuid_derived_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        for u in [&a, &b] {
            assert!(u.starts_with("2.25."), "{u}");
            assert!(u.len() <= 64);
            let digits = &u[5..];
            assert!(digits.bytes().all(|c| c.is_ascii_digit()));
            assert!(!digits.starts_with('0'), "no leading zero: {u}");
        }
    }

    #[test]
    fn a_worklist_item_becomes_the_exam_or_is_refused_by_name() {
        let mut item = worklist::WorklistItem {
            patient_id: "PID-1".into(),
            patient_name: "ROE^ANNA".into(),
            patient_birth_date: "19800101".into(),
            patient_sex: "F".into(),
            accession_number: "ACC1".into(),
            study_instance_uid: "1.2.3.4".into(),
            requested_procedure_id: "RP1".into(),
            scheduled_procedure_step_id: "SPS1".into(),
            ..Default::default()
        };
        let e = Exam::from_worklist(&item, 0).unwrap();
        assert_eq!(e.study_uid, "1.2.3.4");
        assert_eq!(e.birth_date.as_deref(), Some("19800101"));
        assert_eq!(e.order.as_ref().unwrap().step_id, "SPS1");
        let seq = e.request_attributes().unwrap();
        assert_eq!(seq.items().unwrap().len(), 1);
        for (field, bad) in [
            ("StudyInstanceUID", "1.02.3"),
            ("StudyInstanceUID", "1.2.x"),
            ("PatientBirthDate", "1980-01-01"),
            ("PatientSex", "female"),
        ] {
            let mut b = item.clone();
            match field {
                "StudyInstanceUID" => b.study_instance_uid = bad.into(),
                "PatientBirthDate" => b.patient_birth_date = bad.into(),
                _ => b.patient_sex = bad.into(),
            }
            let err = Exam::from_worklist(&b, 0).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
        // No Study Instance UID in the item: a new study.
        item.study_instance_uid.clear();
        assert!(Exam::from_worklist(&item, 0)
            .unwrap()
            .study_uid
            .starts_with("2.25."));
    }

    #[test]
    fn exam_values_are_checked() {
        assert!(Exam::new("123", "DOE^JANE", "A1", 0).is_ok());
        assert!(Exam::new("1\\2", "", "", 0).is_err());
        assert!(Exam::new("", "", "12345678901234567", 0).is_err());
        let e = Exam::new("", "", "", 0).unwrap();
        assert_eq!(e.patient_id, None);
    }

    #[test]
    fn codes_and_decimals_fit_their_vrs() {
        assert_eq!(short_code("thickness_mm"), "thickness_mm");
        let c = short_code("fascicle_length_spread_mm");
        assert_eq!(c.len(), 16);
        assert_ne!(c, short_code("fascicle_length_spread_px"));
        assert!(ds(12345.678_901_234).len() <= 16);
        assert_eq!(ds(1.5), "1.500000");
        let uid = device_observer_uid();
        assert_eq!(uid, device_observer_uid(), "stable");
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
        assert_eq!(device_serial().len(), 12);
    }
}
