//! How a `train` process takes part in data-parallel training (docs/distributed.md):
//! alone, as N ranks on threads of this process (`--devices cpu,cpu`), as the launcher
//! of one process per GPU (`--devices cuda:0,cuda:1`), or as one of those processes
//! (the `RANK`/`WORLD_SIZE` environment that our launcher, or torchrun-style external
//! launchers, set).

use super::error::CliResult;
use twinflow::engine::comm::Communicator;
use twinflow::engine::Device;

/// The GPU a device name (`cuda`, `cuda:N`) names, without opening it: the launcher
/// leaves the GPUs to its children.
fn gpu_ordinal(name: &str) -> Option<usize> {
    match name {
        "cuda" => Some(0),
        _ => name.strip_prefix("cuda:")?.parse().ok(),
    }
}

/// This process's part in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranks {
    /// The only rank.
    Single,
    /// `n` ranks on threads of this process, sharing gradients through memory.
    Threads(usize),
    /// Launch and supervise one rank process per device (CUDA devices, through NCCL).
    Launch(Vec<String>),
    /// One rank process of several.
    Process(ProcessRank),
}

/// One rank process, as its environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRank {
    /// `RANK`.
    pub rank: usize,
    /// `WORLD_SIZE`.
    pub world_size: usize,
    /// `LOCAL_RANK` (default: `RANK`): the GPU of this process unless `--device` says.
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT` (default 127.0.0.1:29500), where rank 0 hands out
    /// the NCCL group id.
    pub address: String,
}

impl Ranks {
    /// The arrangement `--devices` (a comma-separated list) and the environment
    /// (`env(name)` reads a variable) ask for.
    pub fn from(devices: Option<&str>, env: impl Fn(&str) -> Option<String>) -> CliResult<Ranks> {
        let from_env = ProcessRank::from_env(&env)?;
        match (devices, from_env) {
            (Some(_), Some(_)) => Err("--devices starts the rank processes itself: unset RANK \
                 and WORLD_SIZE, or leave out --devices when an external launcher starts them"
                .into()),
            (Some(list), None) => Ranks::from_devices(list),
            (None, Some(process)) => Ok(Ranks::Process(process)),
            (None, None) => Ok(Ranks::Single),
        }
    }

    fn from_devices(list: &str) -> CliResult<Ranks> {
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        let mut gpus: Vec<usize> = Vec::with_capacity(names.len());
        let mut cpus = 0;
        for name in &names {
            match gpu_ordinal(name) {
                _ if *name == "cpu" => cpus += 1,
                Some(ordinal) if !gpus.contains(&ordinal) => gpus.push(ordinal),
                Some(_) => {
                    return Err(format!(
                        "--devices {list}: {name} is named twice (NCCL refuses two ranks on \
                         one GPU)"
                    )
                    .into())
                }
                None => {
                    return Err(format!(
                        "--devices {list}: unknown device {name:?} (valid: cpu, cuda, cuda:N)"
                    )
                    .into())
                }
            }
        }
        match (cpus, gpus.len()) {
            (1, 0) => Ok(Ranks::Single),
            (n, 0) => Ok(Ranks::Threads(n)),
            (0, _) if !cfg!(feature = "nccl") => Err(format!(
                "--devices {list}: this twinflow was built without NCCL; build it with \
                 `cargo build --release --features nccl` to train on several GPUs"
            )
            .into()),
            (0, _) => Ok(Ranks::Launch(
                gpus.iter().map(|o| format!("cuda:{o}")).collect(),
            )),
            _ => Err(format!(
                "--devices {list}: mixes the CPU with GPUs; give only cpu (ranks on threads) \
                 or only cuda:N (one process per GPU)"
            )
            .into()),
        }
    }

    /// How many ranks train the run (the launcher's children for `Launch`).
    pub fn world_size(&self) -> usize {
        match self {
            Ranks::Single => 1,
            Ranks::Threads(n) => *n,
            Ranks::Launch(devices) => devices.len(),
            Ranks::Process(p) => p.world_size,
        }
    }
}

impl ProcessRank {
    /// The rank described by `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
    /// `MASTER_PORT`, or `None` when neither `RANK` nor `WORLD_SIZE` is set.
    fn from_env(env: &impl Fn(&str) -> Option<String>) -> CliResult<Option<ProcessRank>> {
        let number = |name: &str| -> CliResult<Option<usize>> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("{name}={v:?} is not a whole number").into())
                })
                .transpose()
        };
        let (rank, world_size) = match (number("RANK")?, number("WORLD_SIZE")?) {
            (None, None) => return Ok(None),
            (Some(rank), Some(world)) => (rank, world),
            _ => return Err("RANK and WORLD_SIZE are set together or not at all".into()),
        };
        if rank >= world_size {
            return Err(format!("RANK={rank} is not below WORLD_SIZE={world_size}").into());
        }
        let local_rank = number("LOCAL_RANK")?.unwrap_or(rank);
        let host = env("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = env("MASTER_PORT").unwrap_or_else(|| "29500".into());
        port.parse::<u16>()
            .map_err(|_| format!("MASTER_PORT={port:?} is not a port number"))?;
        Ok(Some(ProcessRank {
            rank,
            world_size,
            local_rank,
            address: format!("{host}:{port}"),
        }))
    }

    /// The device of this rank: `--device` when given, else `cuda:LOCAL_RANK`.
    pub fn device(&self, flag: Option<&str>) -> String {
        flag.map_or_else(|| format!("cuda:{}", self.local_rank), str::to_string)
    }

    /// Joins the run's NCCL group on `device`: rank 0 makes the group id and hands it
    /// to the others at [`ProcessRank::address`].
    #[cfg(feature = "nccl")]
    pub fn join(&self, device: Device) -> CliResult<Box<dyn Communicator>> {
        use twinflow::engine::comm::{NcclCommunicator, NcclId, Rendezvous};
        /// How long the processes of a run wait for each other to meet.
        const MEET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
        if device == Device::Cpu {
            return Err(cpu_processes_refused(self));
        }
        let mine = match self.rank {
            0 => NcclId::new()?.0,
            _ => [0; 128],
        };
        let meet = Rendezvous {
            address: self.address.clone(),
            rank: self.rank,
            world_size: self.world_size,
            timeout: MEET_TIMEOUT,
        };
        let shared = meet.share(&mine)?;
        let id = NcclId(shared.try_into().map_err(|_| "a short NCCL id")?);
        let comm = NcclCommunicator::join(&id, self.rank, self.world_size, device)?;
        Ok(Box::new(comm))
    }

    /// Without NCCL in the build, rank processes cannot share gradients.
    #[cfg(not(feature = "nccl"))]
    pub fn join(&self, device: Device) -> CliResult<Box<dyn Communicator>> {
        if device == Device::Cpu {
            return Err(cpu_processes_refused(self));
        }
        Err(format!(
            "RANK={} WORLD_SIZE={}: this twinflow was built without NCCL; build it with \
             `cargo build --release --features nccl` to train on several GPUs",
            self.rank, self.world_size
        )
        .into())
    }
}

fn cpu_processes_refused(p: &ProcessRank) -> super::error::CliError {
    format!(
        "RANK={} WORLD_SIZE={}: rank processes share gradients through NCCL and need CUDA \
         devices; on the CPU, run one process with --devices cpu,cpu,… (ranks on threads)",
        p.rank, p.world_size
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn devices_pick_threads_or_the_launcher() {
        let none = env(&[]);
        assert_eq!(Ranks::from(None, &none).unwrap(), Ranks::Single);
        assert_eq!(Ranks::from(Some("cpu"), &none).unwrap(), Ranks::Single);
        assert_eq!(
            Ranks::from(Some("cpu,cpu,cpu"), &none).unwrap(),
            Ranks::Threads(3)
        );
        let gpus = Ranks::from(Some("cuda:0, cuda:1"), &none);
        match cfg!(feature = "nccl") {
            true => assert_eq!(
                gpus.unwrap(),
                Ranks::Launch(vec!["cuda:0".into(), "cuda:1".into()])
            ),
            false => assert!(gpus.unwrap_err().to_string().contains("without NCCL")),
        }
    }

    #[test]
    fn bad_device_lists_are_errors_naming_the_fault() {
        let none = env(&[]);
        let err = |list| Ranks::from(Some(list), &none).unwrap_err().to_string();
        assert!(err("cuda:0,cuda:0").contains("named twice"));
        assert!(err("cpu,cuda:1").contains("mixes the CPU"));
        assert!(err("cpu,tpu").contains("unknown device \"tpu\""));
        assert!(err("cuda:x").contains("unknown device"));
    }

    #[test]
    fn the_environment_describes_a_rank_process() {
        let vars = [("RANK", "1"), ("WORLD_SIZE", "4"), ("MASTER_PORT", "1234")];
        let Ranks::Process(p) = Ranks::from(None, env(&vars)).unwrap() else {
            panic!("not a process rank")
        };
        assert_eq!((p.rank, p.world_size, p.local_rank), (1, 4, 1));
        assert_eq!(p.address, "127.0.0.1:1234");
        assert_eq!(p.device(None), "cuda:1");
        assert_eq!(p.device(Some("cuda:3")), "cuda:3");
    }

    #[test]
    fn a_bad_environment_is_an_error_naming_the_variable() {
        let err = |vars: &[(&str, &str)]| Ranks::from(None, env(vars)).unwrap_err().to_string();
        assert!(err(&[("RANK", "0")]).contains("set together"));
        assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("not below"));
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        let port = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")];
        assert!(err(&port).contains("MASTER_PORT"));
        let both = Ranks::from(Some("cuda:0"), env(&[("RANK", "0"), ("WORLD_SIZE", "1")]));
        assert!(both.unwrap_err().to_string().contains("unset RANK"));
    }

    #[test]
    fn a_cpu_rank_process_is_refused() {
        let p = ProcessRank {
            rank: 0,
            world_size: 2,
            local_rank: 0,
            address: "127.0.0.1:0".into(),
        };
        let err = p.join(Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("--devices cpu,cpu"), "{err}");
    }
}
