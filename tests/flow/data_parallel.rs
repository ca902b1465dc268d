//! Data parallelism on the CPU backend (`ThreadGroup`, ranks as threads): W ranks with
//! one micro-batch each take the same steps, bit for bit, as one rank with W
//! micro-batches (the same shards, streams and sums in the same order; see
//! `train::parallel`), for flow matching and TwinFlow's `split` recipe; every rank
//! ends with the same weights; small shards, uneven cuts and a rank that dies are
//! errors on the others, not hangs.

use std::thread;
use twinflow::engine::comm::{Communicator, ThreadGroup};
use twinflow::engine::Result;
use twinflow::flow::train::{TrainConfig, Trainer};
use twinflow::nn::Module;

/// A small moons run of `method` (`twinflow`: its `split` recipe).
fn config(method: &str, batch: usize, micro_batches: usize) -> TrainConfig {
    let recipe = match method {
        "twinflow" => "[method.twinflow]\nrecipe = \"split\"",
        _ => "",
    };
    let toml = format!(
        r#"
steps = 4
seed = 3
log_every = 0
micro_batches = {micro_batches}
[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 16
depth = 1
emb_dim = 8
num_classes = 2
label_dropout = 0.1
[method]
name = "{method}"
{recipe}
[data]
dataset = "moons"
batch_size = {batch}
"#
    );
    TrainConfig::from_toml(&toml, "test.toml").unwrap()
}

/// A run's end: every weight of θ and θ⁻ as raw bits, and the loss of each step.
type RunEnd = (Vec<Vec<u32>>, Vec<f64>);

/// Every weight of θ and θ⁻ after `steps` steps, as raw bits.
fn weights(t: &Trainer) -> Vec<Vec<u32>> {
    let ema = t.ema_model().named_params();
    t.model()
        .named_params()
        .into_iter()
        .chain(ema)
        .map(|(_, p)| {
            p.to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

fn single(cfg: TrainConfig, steps: usize) -> RunEnd {
    let mut t = Trainer::new(cfg).unwrap();
    let losses = (0..steps).map(|_| t.step().unwrap().loss).collect();
    (weights(&t), losses)
}

/// Runs `cfg` on `world` thread ranks for `steps` steps; each rank's weights and losses.
fn ranks(cfg: TrainConfig, world: usize, steps: usize) -> Vec<Result<RunEnd>> {
    let handles: Vec<_> = ThreadGroup::new(world, None)
        .unwrap()
        .into_iter()
        .map(|comm| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let mut t = Trainer::new(cfg)?.with_communicator(Box::new(comm))?;
                let losses = (0..steps)
                    .map(|_| t.step().map(|r| r.loss))
                    .collect::<Result<_>>()?;
                Ok((weights(&t), losses))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn matches_micro_batches(method: &str, batch: usize) {
    for world in [2, 4] {
        let reference = single(config(method, batch, world), 4);
        for (rank, r) in ranks(config(method, batch, 1), world, 4)
            .into_iter()
            .enumerate()
        {
            let r = r.unwrap();
            assert!(
                r.0 == reference.0,
                "{method}, world {world}: rank {rank}'s weights differ"
            );
            assert_eq!(
                r.1, reference.1,
                "{method}, world {world}: rank {rank}'s losses"
            );
        }
    }
}

#[test]
fn data_parallel_flow_matching_matches_micro_batches_bit_for_bit() {
    matches_micro_batches("flow_matching", 32);
}

#[test]
fn data_parallel_twinflow_split_matches_micro_batches_bit_for_bit() {
    matches_micro_batches("twinflow", 32);
}

/// The micro-batches themselves: one micro-batch is the plain trainer (unchanged), and
/// several give a different but close step (other noise, the same data).
#[test]
fn data_parallel_one_micro_batch_is_the_plain_trainer() {
    let plain = single(config("flow_matching", 32, 1), 3);
    let toml = config("flow_matching", 32, 1).to_toml().unwrap();
    assert!(
        !toml.contains("micro_batches"),
        "the default is left out: {toml}"
    );
    let again = single(TrainConfig::from_toml(&toml, "resolved.toml").unwrap(), 3);
    assert!(plain == again);
    let split = single(config("flow_matching", 32, 2), 3);
    assert!(split.0 != plain.0);
}

#[test]
fn data_parallel_refuses_shards_it_cannot_cut() {
    // TwinFlow's split recipe needs 4 rows per shard: 12 over 4 ranks leaves 3.
    let errors = ranks(config("twinflow", 12, 1), 4, 1);
    for e in errors {
        let e = e.expect_err("an error").to_string();
        assert!(
            e.contains("batch_size 12") && e.contains("4 per shard"),
            "{e}"
        );
    }
    let e = Trainer::new(config("flow_matching", 10, 4))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("batch_size 10 does not cut into 1 rank(s) × 4"),
        "{e}"
    );
}

/// A rank that fails stops the others with its error instead of leaving them waiting.
#[test]
fn data_parallel_a_dead_rank_is_an_error_on_the_others() {
    let handles: Vec<_> = ThreadGroup::new(2, None)
        .unwrap()
        .into_iter()
        .map(|comm| {
            thread::spawn(move || -> Result<u64> {
                let rank = comm.rank();
                let mut t = Trainer::new(config("flow_matching", 16, 1))?
                    .with_communicator(Box::new(comm))?;
                t.step()?;
                if rank == 1 {
                    return Ok(1); // the thread ends: its communicator leaves the group
                }
                t.step()?;
                Ok(2)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let e = results[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("rank 1 failed: left the group"), "{e}");
}

/// Rank 0's request to stop (Ctrl-C, a spent time budget) stops every rank after the
/// same step, and an error in rank 0's loop reaches the other ranks.
#[test]
fn data_parallel_ranks_stop_together() {
    use twinflow::flow::train::{TrainControl, TrainEvent};
    let dir = std::env::temp_dir().join(format!("twinflow-dp-stop-{}", std::process::id()));
    let run = |stop_at: u64, fail: bool| -> Vec<Result<(u64, bool)>> {
        let handles: Vec<_> = ThreadGroup::new(2, None)
            .unwrap()
            .into_iter()
            .map(|comm| {
                let dir = dir.clone();
                thread::spawn(move || -> Result<(u64, bool)> {
                    let mut t = Trainer::new(config("flow_matching", 16, 1))?
                        .with_communicator(Box::new(comm))?;
                    let summary = t.train_to(10, &dir, |_, event| match event {
                        TrainEvent::Step(r) if r.step == stop_at && fail => {
                            Err(twinflow::engine::Error::invalid("test", "rank 0 broke"))
                        }
                        TrainEvent::Step(r) if r.step == stop_at => Ok(TrainControl::Stop),
                        _ => Ok(TrainControl::Continue),
                    })?;
                    Ok((t.step_count(), summary.stopped_early))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for end in run(3, false) {
        assert_eq!(end.unwrap(), (3, true));
    }
    let ends = run(2, true);
    assert!(ends[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("rank 0 broke"));
    let e = ends[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("rank 0 broke"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
