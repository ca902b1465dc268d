//! `twinflow eval`: scores a flow checkpoint at several NFEs, prints a table and writes
//! the numbers as JSON.

use super::classify::default_classifier;
use super::error::CliResult;
use super::output::{check_output, write_output, OutputKind};
use super::sampler_args::SamplerArgs;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use twinflow::flow::classifier::load_classifier;
use twinflow::flow::data::DataSource;
use twinflow::flow::eval::{evaluate, EvalConfig, EvalReport};
use twinflow::flow::sampler::SamplerConfig;
use twinflow::flow::train::{RestoreOptions, Trainer};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The flow checkpoint to evaluate (e.g. runs/moons-twinflow/checkpoints/latest.safetensors).
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// Comma-separated step counts K of the UCGM sampler, one table row each (e.g. 1,4,10,100).
    #[arg(long, value_name = "LIST", default_value = "1,2,4")]
    nfe: String,
    /// Samples per NFE (and, for 2-D toys, fresh true samples to compare with).
    #[arg(long, value_name = "N", default_value_t = EvalConfig::default().n)]
    n: usize,
    /// Seed of the initial noise (the same noise for every NFE) and of the true toy samples.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Sample from the EMA weights instead of the online weights.
    #[arg(long)]
    ema: bool,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// The classifier of image samples, from `twinflow train-classifier` on the run's
    /// dataset [default: where `train-classifier` writes it for that dataset,
    /// runs/classifier/classifier.safetensors for mnist] (unused for 2-D toys).
    #[arg(long, value_name = "FILE")]
    classifier: Option<PathBuf>,
    /// Where to write the JSON report [default: eval.json in the run directory, i.e. beside
    /// the checkpoints/ folder holding the checkpoint, else beside the checkpoint].
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The directory holding data/ [default: the root saved in the checkpoint's config].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where to sample: cpu, cuda or cuda:N (whatever device the run trained on).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
    /// Samples per sampler call: bounds memory at large --n or NFE.
    #[arg(long, value_name = "B", default_value_t = EvalConfig::default().batch_size)]
    batch_size: usize,
}

/// Parses `--nfe`: positive step counts separated by commas.
fn parse_nfe(list: &str) -> Result<Vec<usize>, String> {
    let bad = || {
        format!("--nfe must be positive step counts separated by commas (e.g. 1,2,4), got {list:?}")
    };
    list.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&k| k > 0)
                .ok_or_else(bad)
        })
        .collect()
}

/// `eval.json` in the run directory of `checkpoint` (the parent of its `checkpoints/`
/// folder), else beside the checkpoint.
fn default_json(checkpoint: &Path) -> PathBuf {
    let dir = checkpoint.parent().unwrap_or(Path::new(""));
    let run = match dir.file_name() {
        Some(name) if name == "checkpoints" => dir.parent().unwrap_or(Path::new("")),
        _ => dir,
    };
    run.join("eval.json")
}

/// Runs `eval`.
pub fn run(a: EvalArgs) -> CliResult<()> {
    let nfe = parse_nfe(&a.nfe)?;
    if a.n < 2 || a.batch_size == 0 {
        return Err("--n must be at least 2 and --batch-size positive".into());
    }
    if !a.checkpoint.is_file() {
        return Err(format!("checkpoint {} not found", a.checkpoint.display()).into());
    }
    let json = a
        .json
        .clone()
        .unwrap_or_else(|| default_json(&a.checkpoint));
    check_output(&json, OutputKind::Json, "--json")?;
    let options = RestoreOptions {
        data_root: a.root.clone(),
        device: Some(a.device.clone()),
    };
    let trainer = Trainer::from_checkpoint_with(&a.checkpoint, &options)?;
    let cfg = EvalConfig {
        nfe,
        n: a.n,
        seed: a.seed,
        ema: a.ema,
        sampler: a.sampler.resolve(&trainer.config().sampler(), 1)?,
        batch_size: a.batch_size,
    };
    let classifier = match trainer.data() {
        DataSource::Toy { .. } => None,
        DataSource::Images { .. } => {
            let data = &trainer.config().data;
            let path = a
                .classifier
                .clone()
                .unwrap_or_else(|| default_classifier(data));
            if !path.is_file() {
                return Err(format!(
                    "no classifier at {}: image samples are scored by a classifier trained \
                     on the run's dataset; run `twinflow train-classifier --dataset {}` \
                     first (or pass --classifier FILE)",
                    path.display(),
                    data.dataset
                )
                .into());
            }
            let (model, file) = load_classifier(&path)?;
            file.check_fits(data)?;
            Some(model)
        }
    };
    let bar = ProgressBar::new(cfg.total_samples().unwrap_or(usize::MAX) as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} samples | {per_sec} | ETA {eta}")
    {
        bar.set_style(style);
    }
    let mut report = evaluate(&trainer, &cfg, classifier.as_ref(), |done, _| {
        bar.set_position(done as u64)
    })
    .map_err(|e| crate::for_flag("--n", a.n, e))?;
    bar.finish_and_clear();
    report.checkpoint = Some(a.checkpoint.display().to_string());
    print!("{}", table(&report));
    write_json(&json, &report)?;
    eprintln!("wrote {}", json.display());
    Ok(())
}

/// A metric's value as printed: accuracies in percent, distances with 5 significant
/// digits.
fn cell(name: &str, value: f64) -> String {
    match name {
        "accuracy" => format!("{:.2}%", 100.0 * value),
        _ => format!("{value:.5e}"),
    }
}

/// The report as a text table: a header, one row per NFE, then the real-data floor.
fn table(r: &EvalReport) -> String {
    let names: Vec<&String> = r.floor.keys().collect();
    let weights = if r.ema { "EMA" } else { "online" };
    let mut out = format!(
        "{} ({}), step {}, {} weights, {:?} sampler, guidance {}, n {}, seed {}\n\
         compared with {}\n",
        r.dataset,
        r.method,
        r.step,
        weights,
        r.sampler.method,
        r.sampler.guidance,
        r.n,
        r.seed,
        r.reference
    );
    let mut line = |first: String, cells: Vec<String>, last: String| {
        out.push_str(&format!("{first:>6}"));
        cells
            .iter()
            .for_each(|c| out.push_str(&format!(" {c:>12}")));
        out.push_str(&format!("  {last}\n"));
    };
    line(
        "NFE".into(),
        names.iter().map(|n| n.to_string()).collect(),
        "time  grid".into(),
    );
    for row in &r.rows {
        let cells = names.iter().map(|n| cell(n, row.metrics[*n])).collect();
        let when = format!("{:.1} s  {}", row.seconds, grid(&row.sampler));
        line(row.nfe.to_string(), cells, when);
    }
    let floor = names.iter().map(|n| cell(n, r.floor[*n])).collect();
    line("real".into(), floor, String::new());
    out
}

/// A row's stochastic ratio and gaps, where they are not the deterministic defaults.
fn grid(s: &SamplerConfig) -> String {
    let mut parts = Vec::new();
    if s.stochastic_ratio != 0.0 {
        parts.push(format!("rho {}", s.stochastic_ratio));
    }
    if s.gaps != [0.0, 0.0] {
        parts.push(format!("gaps {}/{}", s.gaps[0], s.gaps[1]));
    }
    parts.join(", ")
}

fn write_json(path: &Path, report: &EvalReport) -> CliResult<()> {
    let text = serde_json::to_string_pretty(report)? + "\n";
    write_output(path, OutputKind::Json, text.as_bytes())
}
