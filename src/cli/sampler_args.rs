//! Sampler flags shared by `sample` and `eval`: each overrides the run's `[sampler]`
//! table (the config the model was trained with), which in turn defaults to the 1-NFE
//! deterministic UCGM sampler.

use super::error::CliResult;
use clap::Args;
use twinflow::flow::sampler::{JumpTarget, SamplerConfig, SamplerMethod};

/// Flags that adjust a [`SamplerConfig`]; absent flags keep the run's setting.
#[derive(Debug, Clone, Default, Args)]
pub struct SamplerArgs {
    /// Sampler: `ucgm` (any-step, the default), `euler` or `heun` (instantaneous
    /// velocity; for flow-matching models). Default: the run's `[sampler] method`.
    #[arg(long, value_name = "NAME", value_parser = ["ucgm", "euler", "heun"])]
    pub sampler: Option<String>,
    /// Classifier-free guidance weight w (1: no guidance; each step then evaluates the
    /// network on a doubled batch). Default: the run's `[sampler] guidance`.
    #[arg(long, value_name = "W")]
    pub guidance: Option<f64>,
    /// UCGM stochastic ratio ρ in [0, 1]: the share of fresh noise mixed in at each step
    /// (0: deterministic). Giving it (or --gaps) turns the few-step presets off.
    #[arg(long, value_name = "RHO")]
    pub stochastic_ratio: Option<f64>,
    /// Gaps g0,g1 left at the noise and data ends of the time grid (e.g. 0.001,0.6).
    /// Giving them (or --stochastic-ratio) turns the few-step presets off.
    #[arg(long, value_name = "G0,G1", value_parser = parse_pair)]
    pub gaps: Option<[f64; 2]>,
    /// The reference's few-step UCGM settings at 2 and 4 steps (ρ = 1, gaps 0.001,0.6
    /// and 0.001,0.5): `on` or `off`. Default: on for TwinFlow runs, off otherwise
    /// (the run's `[sampler] presets`).
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub presets: Option<String>,
    /// Kumaraswamy warp a,b,c of the time grid (1,1,1: uniform).
    #[arg(long, value_name = "A,B,C", value_parser = parse_triple)]
    pub kumaraswamy: Option<[f64; 3]>,
    /// UCGM jump target of each step: `few_step` (predict the data), `any_step` (the
    /// next grid time) or `multi_step` (instantaneous velocity). Default: the run's
    /// `[sampler] jump` (any_step for MeanFlow runs, few_step otherwise).
    #[arg(long, value_name = "TARGET", value_parser = ["few_step", "any_step", "multi_step"])]
    pub jump: Option<String>,
}

impl SamplerArgs {
    /// `base` at `nfe` steps ([`SamplerConfig::at_steps`], presets included) with every
    /// given flag applied; checked. An explicit `--gaps` or `--stochastic-ratio` turns
    /// the presets off, so that later `at_steps` calls (one per NFE in `eval`) keep it.
    pub fn resolve(&self, base: &SamplerConfig, nfe: usize) -> CliResult<SamplerConfig> {
        let mut cfg = *base;
        if let Some(presets) = &self.presets {
            cfg.presets = Some(presets == "on");
        }
        if self.gaps.is_some() || self.stochastic_ratio.is_some() {
            cfg.presets = Some(false);
        }
        // The method first: the presets apply to UCGM only.
        if let Some(name) = &self.sampler {
            cfg.method = match name.as_str() {
                "euler" => SamplerMethod::Euler,
                "heun" => SamplerMethod::Heun,
                _ => SamplerMethod::Ucgm,
            };
            // The run's jump target (a MeanFlow run's any_step) is a UCGM setting: Euler
            // and Heun chosen here do without it.
            if cfg.method != SamplerMethod::Ucgm {
                cfg.jump = None;
            }
        }
        if let Some(jump) = &self.jump {
            cfg.jump = Some(match jump.as_str() {
                "any_step" => JumpTarget::AnyStep,
                "multi_step" => JumpTarget::MultiStep,
                _ => JumpTarget::FewStep,
            });
        }
        let mut cfg = cfg.at_steps(nfe);
        cfg.guidance = self.guidance.unwrap_or(cfg.guidance);
        cfg.stochastic_ratio = self.stochastic_ratio.unwrap_or(cfg.stochastic_ratio);
        cfg.gaps = self.gaps.unwrap_or(cfg.gaps);
        cfg.kumaraswamy = self.kumaraswamy.unwrap_or(cfg.kumaraswamy);
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_list<const N: usize>(s: &str) -> Result<[f64; N], String> {
    let values: Vec<f64> = s
        .split(',')
        .map(|v| v.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected {N} comma-separated numbers, got {s:?}"))?;
    values
        .try_into()
        .map_err(|_| format!("expected {N} comma-separated numbers, got {s:?}"))
}

fn parse_pair(s: &str) -> Result<[f64; 2], String> {
    parse_list(s)
}

fn parse_triple(s: &str) -> Result<[f64; 3], String> {
    parse_list(s)
}
