//! Training checkpoints as safetensors files, readable by PyTorch
//! (`safetensors.torch.load_file`).
//!
//! Layout: tensors `model.<param>`, `ema.<param>` (the EMA copy) and
//! `optim.<param>.<buffer>` (optimizer state); in the `__metadata__` string map,
//! `format` = `pt`, `twinflow_checkpoint` = the layout version, `step`, and JSON
//! entries `rng` (generator states by name), `config` (the model config), `optimizer`
//! (its hyper-parameters and step counts) and `ema` (its decay warm-up state).
//!
//! A save writes a temporary file beside the target and renames it over the target, so
//! an existing checkpoint is replaced only by a complete one. Restoring into a model
//! checks every name, shape and dtype first and reports every mismatch in one error;
//! nothing is changed unless everything fits.

mod codec;
mod error;

pub use error::CheckpointError;

use crate::atomic_file;
use crate::ema::{Ema, EmaState};
use crate::module::Module;
use crate::optim::{Optimizer, OptimizerRecord, OptimizerState};
use safetensors::tensor::{SafeTensorError, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use twinflow_engine::{GeneratorState, Tensor};

const MODEL: &str = "model.";
const EMA: &str = "ema.";
const OPTIM: &str = "optim.";
/// The metadata key that marks a TwinFlow checkpoint, with the layout version.
const VERSION_KEY: &str = "twinflow_checkpoint";
const VERSION: &str = "1";
/// The largest header [`Checkpoint::read_config`] reads (the safetensors format's own
/// limit), so that a foreign file cannot make it allocate without bound.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The EMA part of a checkpoint.
#[derive(Debug, Clone)]
pub struct EmaSnapshot {
    /// Decay warm-up state.
    pub state: EmaState,
    /// Parameters of the EMA copy (none when θ⁻ is θ).
    pub params: NamedTensors,
}

/// Everything needed to resume training: built from the live objects and saved, or
/// loaded and restored into freshly built ones.
///
/// A checkpoint built for saving holds the live tensors (no copy): save it before the
/// next update.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Optimizer steps taken.
    pub step: u64,
    /// Model parameters by name.
    pub model: NamedTensors,
    /// The EMA copy and its state, if saved.
    pub ema: Option<EmaSnapshot>,
    /// The optimizer's state, if saved.
    pub optimizer: Option<OptimizerState>,
    /// Random generator states by name (data order, noise, forward passes, ...).
    pub rng: BTreeMap<String, GeneratorState>,
    /// The model's configuration, to rebuild it before restoring.
    pub config: Option<serde_json::Value>,
    /// The file it was loaded from, for error messages.
    path: Option<PathBuf>,
}

/// Tensors by name, as [`Module::named_params`] lists them.
type NamedTensors = Vec<(String, Tensor)>;

/// A generator state in the `rng` metadata entry.
#[derive(Serialize, Deserialize)]
struct RngRecord {
    seed: u64,
    offset: u64,
}

impl Checkpoint {
    /// A checkpoint at `step` holding `model`'s parameters.
    pub fn new(step: u64, model: &dyn Module) -> Self {
        Checkpoint {
            step,
            model: model.named_params(),
            ema: None,
            optimizer: None,
            rng: BTreeMap::new(),
            config: None,
            path: None,
        }
    }

    /// Adds the EMA copy's parameters and warm-up state.
    pub fn with_ema<M: Module + Clone>(mut self, ema: &Ema<M>) -> Self {
        self.ema = Some(EmaSnapshot {
            state: ema.state(),
            params: ema.shadow().map(Module::named_params).unwrap_or_default(),
        });
        self
    }

    /// Adds the optimizer's state.
    pub fn with_optimizer(mut self, optimizer: &dyn Optimizer) -> Self {
        self.optimizer = Some(optimizer.state());
        self
    }

    /// Adds a generator state under `name`.
    pub fn with_rng(mut self, name: &str, state: GeneratorState) -> Self {
        self.rng.insert(name.to_string(), state);
        self
    }

    /// Adds the model configuration.
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = Some(config);
        self
    }

    /// Writes the checkpoint to `path` (through a temporary file, see the module docs).
    /// The same content always gives the same bytes.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let encoded = self.encode_tensors(path)?;
        let metadata = self.metadata(path)?;
        let io = |path: &Path, source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header = codec::header(&encoded, &metadata).map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("its header cannot be written as JSON: {e}"),
        })?;
        atomic_file::write_atomically(
            path,
            |file| codec::write(file, &header, &encoded).map_err(|e| io(path, e)),
            io,
        )
    }

    /// Reads a checkpoint. A file that is missing, truncated, corrupt or not a TwinFlow
    /// checkpoint gives an error naming it and saying what is wrong.
    pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// [`Checkpoint::load`] for a file's contents already in memory; `path` names the
    /// file in errors (and is the checkpoint's origin).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| corrupt(describe(&e, bytes.len())))?;
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| corrupt(describe(&e, bytes.len())))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut checkpoint = Checkpoint::from_metadata(&metadata).map_err(corrupt)?;
        checkpoint.path = Some(path.to_path_buf());
        checkpoint.add_tensors(&file, &metadata).map_err(corrupt)?;
        Ok(checkpoint)
    }

    /// The config metadata of the checkpoint at `path` ([`Checkpoint::config`]), read
    /// from the file's header only, without its tensors: to tell what kind of file an
    /// existing checkpoint is at little cost. Fails as [`Checkpoint::load`] does for a
    /// file that is missing or not a TwinFlow checkpoint (its tensors are not checked).
    pub fn read_config(
        path: impl AsRef<Path>,
    ) -> Result<Option<serde_json::Value>, CheckpointError> {
        let path = path.as_ref();
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| {
            corrupt(format!(
                "{file_len} bytes, too short for a safetensors header"
            ))
        })?;
        let len = u64::from_le_bytes(len);
        if len > MAX_HEADER_BYTES || len > file_len.saturating_sub(8) {
            return Err(corrupt(format!(
                "its header length {len} does not fit the file of {file_len} bytes"
            )));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(io)?;
        #[derive(Deserialize)]
        struct Header {
            #[serde(rename = "__metadata__", default)]
            metadata: HashMap<String, String>,
        }
        let header: Header = serde_json::from_slice(&header)
            .map_err(|e| corrupt(format!("its header is not safetensors JSON: {e}")))?;
        Ok(Checkpoint::from_metadata(&header.metadata)
            .map_err(corrupt)?
            .config)
    }

    /// Copies the saved parameters into `model`, in place (an optimizer built on the
    /// model stays valid). Refuses, changing nothing, unless every parameter is saved
    /// with its shape and dtype and nothing else is saved; the error lists every
    /// missing, unexpected, misshapen and mistyped tensor.
    pub fn restore_model(&self, model: &mut dyn Module) -> Result<(), CheckpointError> {
        self.restore_params("model", MODEL, &self.model, &model.named_params())
    }

    /// Restores the EMA copy's parameters (as [`Checkpoint::restore_model`]) and its
    /// decay warm-up state.
    pub fn restore_ema<M: Module + Clone>(&self, ema: &mut Ema<M>) -> Result<(), CheckpointError> {
        let Some(snapshot) = &self.ema else {
            return Err(self.mismatch("EMA", vec!["the checkpoint holds no EMA".into()]));
        };
        let before = ema.state();
        ema.set_state(snapshot.state)
            .map_err(|e| self.mismatch("EMA", vec![e.to_string()]))?;
        let expected = ema.shadow().map(Module::named_params).unwrap_or_default();
        let restored = self.restore_params("EMA", EMA, &snapshot.params, &expected);
        if restored.is_err() {
            // Same state as before the call, which cannot be refused.
            let _ = ema.set_state(before);
        }
        restored
    }

    /// The number of values of the model's parameters it holds (the sum of their
    /// element counts): what a network built from its config must have.
    pub fn model_parameter_count(&self) -> usize {
        self.model.iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Whether the checkpoint holds EMA parameters θ⁻ (an EMA with decay target 0
    /// saves none: its θ⁻ was θ).
    pub fn has_ema_weights(&self) -> bool {
        self.ema.as_ref().is_some_and(|e| !e.params.is_empty())
    }

    /// Copies the saved EMA parameters θ⁻ into `model` (checked as in
    /// [`Checkpoint::restore_model`]), without any decay warm-up state: to start a new
    /// run, with an EMA of its own, from a checkpoint's θ⁻. Refuses a checkpoint without
    /// them (see [`Checkpoint::has_ema_weights`]).
    pub fn restore_ema_weights(&self, model: &mut dyn Module) -> Result<(), CheckpointError> {
        match self.ema.as_ref().filter(|e| !e.params.is_empty()) {
            Some(snapshot) => {
                self.restore_params("EMA", EMA, &snapshot.params, &model.named_params())
            }
            None => {
                Err(self.mismatch("EMA", vec!["the checkpoint holds no EMA parameters".into()]))
            }
        }
    }

    /// Restores the optimizer's hyper-parameters, step counts and buffers.
    pub fn restore_optimizer(&self, optimizer: &mut dyn Optimizer) -> Result<(), CheckpointError> {
        let Some(state) = &self.optimizer else {
            return Err(self.mismatch(
                "optimizer",
                vec!["the checkpoint holds no optimizer state".into()],
            ));
        };
        optimizer
            .load_state(state)
            .map_err(|e| self.mismatch("optimizer", vec![e.to_string()]))
    }

    /// The generator state saved under `name`.
    pub fn rng(&self, name: &str) -> Result<GeneratorState, CheckpointError> {
        self.rng.get(name).copied().ok_or_else(|| {
            let saved: Vec<&str> = self.rng.keys().map(String::as_str).collect();
            self.mismatch(
                "random generators",
                vec![format!(
                    "no generator state named `{name}` (saved: {})",
                    saved.join(", ")
                )],
            )
        })
    }

    /// The file this checkpoint was loaded from, or a placeholder for errors about an
    /// unsaved one.
    fn origin(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| "<in memory>".into())
    }

    fn mismatch(&self, target: &'static str, problems: Vec<String>) -> CheckpointError {
        CheckpointError::Mismatch {
            path: self.origin(),
            target,
            problems,
        }
    }

    /// Checks `saved` against `expected` and copies the values in when all fit.
    fn restore_params(
        &self,
        target: &'static str,
        prefix: &str,
        saved: &[(String, Tensor)],
        expected: &[(String, Tensor)],
    ) -> Result<(), CheckpointError> {
        let problems = compare(prefix, saved, expected);
        if !problems.is_empty() {
            return Err(self.mismatch(target, problems));
        }
        let saved: HashMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let copy = |param: &Tensor, value: &Tensor| param.assign(&value.to_device(param.device())?);
        for (name, param) in expected {
            if let Some(value) = saved.get(name.as_str()) {
                copy(param, value).map_err(|source| CheckpointError::Tensor {
                    path: self.origin(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Every tensor's full name, dtype, shape and bytes, refusing duplicate names.
    fn encode_tensors(
        &self,
        path: &Path,
    ) -> Result<BTreeMap<String, codec::Encoded>, CheckpointError> {
        let tensor_error = |source| CheckpointError::Tensor {
            path: path.to_path_buf(),
            source,
        };
        let mut out = BTreeMap::new();
        for (name, t) in self.named_tensors() {
            let (dtype, bytes) = codec::encode(t).map_err(tensor_error)?;
            let shape = t.shape().to_vec();
            if out
                .insert(
                    name.clone(),
                    codec::Encoded {
                        dtype,
                        shape,
                        bytes,
                    },
                )
                .is_some()
            {
                return Err(tensor_error(twinflow_engine::Error::invalid(
                    "checkpoint",
                    format!("two tensors are named `{name}`"),
                )));
            }
        }
        Ok(out)
    }

    /// Every tensor with its prefixed name.
    fn named_tensors(&self) -> impl Iterator<Item = (String, &Tensor)> {
        let ema = self.ema.iter().flat_map(|e| &e.params);
        let optim = self.optimizer.iter().flat_map(|o| &o.tensors);
        prefixed(MODEL, &self.model)
            .chain(prefixed(EMA, ema))
            .chain(prefixed(OPTIM, optim))
    }

    /// The `__metadata__` string map, sorted by key.
    fn metadata(&self, path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
        let rng: BTreeMap<&str, RngRecord> = self
            .rng
            .iter()
            .map(|(n, s)| {
                let record = RngRecord {
                    seed: s.seed,
                    offset: s.offset,
                };
                (n.as_str(), record)
            })
            .collect();
        let mut m = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            (VERSION_KEY.to_string(), VERSION.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("rng".to_string(), to_json(&rng, path)?),
        ]);
        if let Some(config) = &self.config {
            m.insert("config".into(), config.to_string());
        }
        if let Some(optimizer) = &self.optimizer {
            m.insert("optimizer".into(), to_json(&optimizer.record, path)?);
        }
        if let Some(ema) = &self.ema {
            m.insert("ema".into(), to_json(&ema.state, path)?);
        }
        Ok(m)
    }

    /// A checkpoint without tensors from the metadata map, or what is wrong with it.
    fn from_metadata(metadata: &HashMap<String, String>) -> Result<Checkpoint, String> {
        match metadata.get(VERSION_KEY).map(String::as_str) {
            Some(VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "layout version {}, this build reads {VERSION}",
                    twinflow_engine::excerpt(other)
                ))
            }
            None => {
                return Err(format!(
                    "not a TwinFlow checkpoint (no `{VERSION_KEY}` entry in its metadata)"
                ))
            }
        }
        let step = metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or("the metadata has no valid `step`")?;
        let rng: BTreeMap<String, RngRecord> = parse_entry(metadata, "rng")?.unwrap_or_default();
        Ok(Checkpoint {
            step,
            model: Vec::new(),
            ema: None,
            optimizer: None,
            rng: rng
                .into_iter()
                .map(|(n, r)| {
                    (
                        n,
                        GeneratorState {
                            seed: r.seed,
                            offset: r.offset,
                        },
                    )
                })
                .collect(),
            config: parse_entry(metadata, "config")?,
            path: None,
        })
    }

    /// Sorts the file's tensors into the model, EMA and optimizer sections, with the
    /// EMA and optimizer records of the metadata.
    fn add_tensors(
        &mut self,
        file: &SafeTensors<'_>,
        metadata: &HashMap<String, String>,
    ) -> Result<(), String> {
        let (mut ema, mut optim, mut problems) = (Vec::new(), Vec::new(), Vec::new());
        let mut views: Vec<(&str, TensorView<'_>)> = file.iter().collect();
        views.sort_by(|a, b| a.0.cmp(b.0));
        for (name, view) in views {
            let tensor = match codec::decode(&view) {
                Ok(t) => t,
                Err(why) => {
                    problems.push(format!("`{name}` has {why}"));
                    continue;
                }
            };
            let section = [
                (MODEL, &mut self.model),
                (EMA, &mut ema),
                (OPTIM, &mut optim),
            ]
            .into_iter()
            .find_map(|(prefix, section)| Some((name.strip_prefix(prefix)?, section)));
            match section {
                Some((short, section)) => section.push((short.to_string(), tensor)),
                None => problems.push(format!(
                    "tensor `{name}` is outside the {MODEL}, {EMA} and {OPTIM} sections"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let ema_state: Option<EmaState> = parse_entry(metadata, "ema")?;
        self.ema = section_with_record("ema", ema_state, ema)?
            .map(|(state, params)| EmaSnapshot { state, params });
        let record: Option<OptimizerRecord> = parse_entry(metadata, "optimizer")?;
        self.optimizer = section_with_record("optimizer", record, optim)?
            .map(|(record, tensors)| OptimizerState { tensors, record });
        Ok(())
    }
}

/// `(prefix + name, tensor)` for each named tensor.
fn prefixed<'a>(
    prefix: &'static str,
    tensors: impl IntoIterator<Item = &'a (String, Tensor)>,
) -> impl Iterator<Item = (String, &'a Tensor)> {
    tensors
        .into_iter()
        .map(move |(n, t)| (format!("{prefix}{n}"), t))
}

/// A metadata entry as JSON.
fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<String, CheckpointError> {
    serde_json::to_string(value).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("metadata cannot be written as JSON: {e}"),
    })
}

/// A section's record and tensors; tensors without a record are an error.
fn section_with_record<R>(
    key: &str,
    record: Option<R>,
    tensors: NamedTensors,
) -> Result<Option<(R, NamedTensors)>, String> {
    match (record, tensors.is_empty()) {
        (Some(record), _) => Ok(Some((record, tensors))),
        (None, true) => Ok(None),
        (None, false) => Err(format!(
            "the file has {key} tensors but no `{key}` entry in its metadata"
        )),
    }
}

/// A JSON metadata entry, `None` when absent.
fn parse_entry<T: serde::de::DeserializeOwned>(
    metadata: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, String> {
    metadata
        .get(key)
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| format!("the metadata entry `{key}` is unreadable: {e}"))
}

/// Every difference between the saved tensors and the expected parameters, names
/// written with the section prefix.
fn compare(prefix: &str, saved: &[(String, Tensor)], expected: &[(String, Tensor)]) -> Vec<String> {
    let mut saved: BTreeMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut problems = Vec::new();
    for (name, param) in expected {
        let Some(t) = saved.remove(name.as_str()) else {
            problems.push(format!(
                "missing tensor `{prefix}{name}` ({:?} {})",
                param.shape(),
                param.dtype()
            ));
            continue;
        };
        if t.shape() != param.shape() {
            problems.push(format!(
                "`{prefix}{name}` has shape {:?}, expected {:?}",
                t.shape(),
                param.shape()
            ));
        }
        if t.dtype() != param.dtype() {
            problems.push(format!(
                "`{prefix}{name}` has dtype {}, expected {}",
                t.dtype(),
                param.dtype()
            ));
        }
    }
    for name in saved.keys() {
        problems.push(format!("unexpected tensor `{prefix}{name}`"));
    }
    problems
}

/// What a safetensors parse error means for a file of `len` bytes.
fn describe(e: &SafeTensorError, len: usize) -> String {
    use SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!(
            "the file has {len} bytes, too few for the 8-byte header length (empty or truncated)"
        ),
        E::InvalidHeaderLength => format!(
            "the header runs past the end of the file ({len} bytes): truncated, or not a \
             safetensors file"
        ),
        E::MetadataIncompleteBuffer => format!(
            "the tensor data does not end where the header says ({len} bytes on disk): the \
             file is truncated or has trailing bytes"
        ),
        E::HeaderTooLarge => "the header length field is implausibly large: not a safetensors \
                              file"
            .into(),
        E::InvalidHeader(_) | E::InvalidHeaderStart | E::InvalidHeaderDeserialization(_) => {
            format!("the header is not valid safetensors JSON ({e}): corrupt, or not a safetensors file")
        }
        other => format!("invalid safetensors data: {other}"),
    }
}
