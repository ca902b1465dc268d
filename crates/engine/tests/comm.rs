//! The in-process communicator (`twinflow_engine::comm::ThreadGroup`): each collective
//! on 1 to 4 threads, the rank-order determinism, and how a failing or silent rank
//! stops the others instead of hanging them.

use std::thread;
use std::time::{Duration, Instant};
use twinflow_engine::comm::{Communicator, ReduceOp, ThreadCommunicator, ThreadGroup};
use twinflow_engine::{DType, Device, Result, Tensor};

/// Runs `f` on every rank of a fresh group, each on its own thread; rank order results.
fn on_ranks<T: Send + 'static>(
    world: usize,
    timeout: Option<Duration>,
    f: impl Fn(ThreadCommunicator) -> Result<T> + Send + Sync + Clone + 'static,
) -> Vec<Result<T>> {
    let handles: Vec<_> = ThreadGroup::new(world, timeout)
        .expect("group")
        .into_iter()
        .map(|comm| {
            let f = f.clone();
            thread::spawn(move || f(comm))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

fn tensor(values: &[f64], dtype: DType) -> Tensor {
    Tensor::from_f64s(values, &[values.len()], dtype, Device::Cpu).expect("tensor")
}

#[test]
fn all_reduce_sums_and_averages_on_every_rank() {
    for world in 1..=4 {
        for (op, scale) in [(ReduceOp::Sum, 1.0), (ReduceOp::Mean, 1.0 / world as f64)] {
            let results = on_ranks(world, None, move |c| {
                let r = c.rank() as f64;
                let t = tensor(&[r, 10.0 * r, 1.0], DType::F32);
                c.all_reduce(&t, op)?;
                t.to_vec_f64()
            });
            let s = (0..world).sum::<usize>() as f64;
            let expected = [s * scale, 10.0 * s * scale, world as f64 * scale]
                .map(|x| x as f32 as f64)
                .to_vec();
            for r in results {
                assert_eq!(r.expect("all_reduce"), expected, "world {world}, {op:?}");
            }
        }
    }
}

#[test]
fn broadcast_copies_the_root_and_barrier_returns() {
    let results = on_ranks(3, None, |c| {
        let t = tensor(&[c.rank() as f64; 4], DType::F64);
        c.broadcast(&t, 2)?;
        c.barrier()?;
        t.to_vec_f64()
    });
    for r in results {
        assert_eq!(r.expect("broadcast"), vec![2.0; 4]);
    }
}

#[test]
fn many_collectives_in_a_row_stay_in_step() {
    let results = on_ranks(4, None, |c| {
        let t = tensor(&[1.0], DType::F64);
        for _ in 0..200 {
            t.assign(&t.add_scalar(c.rank() as f64)?)?;
            c.all_reduce(&t, ReduceOp::Mean)?;
        }
        t.to_vec_f64()
    });
    let first = results[0].as_ref().expect("rank 0").clone();
    for r in &results {
        assert_eq!(r.as_ref().expect("rank"), &first);
    }
}

#[test]
fn a_failing_rank_stops_the_others_with_its_error() {
    let start = Instant::now();
    let results = on_ranks(3, None, |c| {
        let t = tensor(&[1.0], DType::F32);
        c.all_reduce(&t, ReduceOp::Sum)?;
        if c.rank() == 1 {
            c.abort("out of data");
            return Ok(());
        }
        c.all_reduce(&t, ReduceOp::Sum)
    });
    // Far below the default five-minute timeout: the others hear of it at once.
    assert!(start.elapsed() < Duration::from_secs(30));
    for r in [0, 2] {
        let e = results[r].as_ref().unwrap_err().to_string();
        assert!(e.contains("rank 1 failed: out of data"), "{e}");
    }
}

#[test]
fn a_rank_that_returns_early_stops_the_others() {
    let results = on_ranks(2, None, |c| {
        let t = tensor(&[1.0], DType::F32);
        if c.rank() == 0 {
            return Ok(()); // dropping its communicator leaves the group
        }
        c.all_reduce(&t, ReduceOp::Sum)
    });
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("rank 0 failed: left the group"), "{e}");
}

#[test]
fn a_silent_rank_times_out_the_others() {
    let results = on_ranks(2, Some(Duration::from_millis(200)), |c| {
        if c.rank() == 0 {
            thread::sleep(Duration::from_secs(2));
            return Ok(());
        }
        c.barrier()
    });
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("waited") && e.contains("barrier"), "{e}");
}

#[test]
fn mismatched_tensors_are_errors_naming_the_ranks() {
    let results = on_ranks(2, None, |c| {
        let t = tensor(&vec![1.0; 2 + c.rank()], DType::F32);
        c.all_reduce(&t, ReduceOp::Sum)
    });
    for r in results {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("rank 1 sent 3 values, rank 0 sent 2"), "{e}");
    }
    let e = ThreadGroup::new(0, None).err().expect("error").to_string();
    assert!(e.contains("at least one rank"), "{e}");
}
