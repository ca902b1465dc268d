//! How the ranks of a multi-process run meet: rank 0 hands a small secret (NCCL's
//! group id) to every other rank over TCP, at the address every rank is given
//! (`MASTER_ADDR:MASTER_PORT`, as PyTorch's launchers name it).
//!
//! Rank 0 listens; each other rank connects (retrying until rank 0 is up), says which
//! rank of which world size it is, and receives the payload. Rank 0 checks that every
//! rank below the world size came exactly once and that all agree on the world size,
//! so that two jobs started on one port, or a mistyped `WORLD_SIZE`, are errors naming
//! the ranks instead of a hang inside NCCL. Nothing here needs a GPU, so it is tested
//! on any machine.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const OP: &str = "rendezvous";
/// The first bytes of every hello, so that a stray connection is told apart.
const MAGIC: &[u8; 4] = b"TWFR";
/// How long a connecting rank waits between tries while rank 0 is not up yet.
const RETRY: Duration = Duration::from_millis(100);

/// Where the ranks meet and how long they wait for each other.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// The address rank 0 listens on and the others connect to (`host:port`).
    pub address: String,
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// How many ranks the run has.
    pub world_size: usize,
    /// How long to wait for the other ranks before failing.
    pub timeout: Duration,
}

impl Rendezvous {
    /// Rank 0: sends `payload` to every other rank and returns it once all have it.
    /// Another rank: receives rank 0's payload (`payload` is ignored; its length must
    /// be the same on every rank).
    pub fn share(&self, payload: &[u8]) -> Result<Vec<u8>> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(Error::invalid(
                OP,
                format!(
                    "rank {} does not fit a world size of {}",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.world_size == 1 {
            return Ok(payload.to_vec());
        }
        let deadline = Instant::now() + self.timeout;
        match self.rank {
            0 => self.serve(payload, deadline).map(|_| payload.to_vec()),
            _ => self.receive(payload.len(), deadline),
        }
    }

    fn serve(&self, payload: &[u8], deadline: Instant) -> Result<()> {
        let listener = TcpListener::bind(self.resolve()?)
            .map_err(|e| self.fail(format!("rank 0 cannot listen there: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| self.fail(e.to_string()))?;
        let mut joined = vec![false; self.world_size];
        joined[0] = true;
        while joined.iter().any(|j| !j) {
            match listener.accept() {
                Ok((stream, peer)) => self.welcome(stream, peer, payload, &mut joined)?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(self.fail(format!(
                            "rank 0 waited {:?} for ranks {:?}",
                            self.timeout,
                            missing(&joined)
                        )));
                    }
                    std::thread::sleep(RETRY / 10);
                }
                Err(e) => return Err(self.fail(format!("accepting a rank: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads one rank's hello and sends it the payload, or refuses it.
    fn welcome(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        payload: &[u8],
        joined: &mut [bool],
    ) -> Result<()> {
        let from = |why: String| self.fail(format!("a rank connecting from {peer}: {why}"));
        stream
            .set_nonblocking(false)
            .and_then(|_| stream.set_read_timeout(Some(self.timeout)))
            .map_err(|e| from(e.to_string()))?;
        let mut hello = [0u8; 20];
        stream
            .read_exact(&mut hello)
            .map_err(|e| from(format!("no hello: {e}")))?;
        if &hello[..4] != MAGIC {
            // Not one of ours (a port scan, another program): ignore it.
            return Ok(());
        }
        let world = u64::from_le_bytes(hello[4..12].try_into().unwrap_or_default());
        let rank = u64::from_le_bytes(hello[12..20].try_into().unwrap_or_default());
        let problem = if world != self.world_size as u64 {
            Some(format!(
                "rank {rank} was started with a world size of {world}, rank 0 with {}",
                self.world_size
            ))
        } else {
            match usize::try_from(rank).ok().and_then(|r| joined.get(r)) {
                Some(false) => None,
                Some(true) => Some(format!("rank {rank} joined twice")),
                None => Some(format!("rank {rank} is not below the world size {world}")),
            }
        };
        if let Some(why) = problem {
            // The refused rank hears why before rank 0 gives up.
            let _ = stream
                .write_all(&[1])
                .and_then(|_| stream.write_all(why.as_bytes()));
            return Err(self.fail(why));
        }
        stream
            .write_all(&[0])
            .and_then(|_| stream.write_all(payload))
            .map_err(|e| from(format!("sending the id: {e}")))?;
        joined[rank as usize] = true;
        Ok(())
    }

    fn receive(&self, len: usize, deadline: Instant) -> Result<Vec<u8>> {
        let mut stream = self.connect(deadline)?;
        let mut hello = Vec::with_capacity(20);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&(self.world_size as u64).to_le_bytes());
        hello.extend_from_slice(&(self.rank as u64).to_le_bytes());
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(RETRY);
        stream
            .set_read_timeout(Some(left))
            .and_then(|_| stream.write_all(&hello))
            .map_err(|e| self.fail(format!("saying hello to rank 0: {e}")))?;
        let mut status = [0u8; 1];
        stream
            .read_exact(&mut status)
            .map_err(|e| self.fail(format!("no answer from rank 0: {e}")))?;
        if status[0] != 0 {
            let mut why = String::new();
            let _ = stream.read_to_string(&mut why);
            return Err(self.fail(format!("rank 0 refused rank {}: {why}", self.rank)));
        }
        let mut payload = vec![0u8; len];
        stream
            .read_exact(&mut payload)
            .map_err(|e| self.fail(format!("reading the id from rank 0: {e}")))?;
        Ok(payload)
    }

    /// Connects to rank 0, retrying until it listens or the deadline passes.
    fn connect(&self, deadline: Instant) -> Result<TcpStream> {
        let addr = self.resolve()?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&addr, left.max(RETRY)) {
                Ok(stream) => return Ok(stream),
                Err(e) if Instant::now() >= deadline => {
                    return Err(self.fail(format!(
                        "rank {} could not reach rank 0 within {:?}: {e}",
                        self.rank, self.timeout
                    )))
                }
                Err(_) => std::thread::sleep(RETRY),
            }
        }
    }

    fn resolve(&self) -> Result<SocketAddr> {
        self.address
            .to_socket_addrs()
            .map_err(|e| self.fail(format!("not a host:port ({e})")))?
            .next()
            .ok_or_else(|| self.fail("the host has no address".into()))
    }

    fn fail(&self, why: String) -> Error {
        Error::invalid(OP, format!("{} (rank {}): {why}", self.address, self.rank))
    }
}

/// The ranks that have not joined yet.
fn missing(joined: &[bool]) -> Vec<usize> {
    (0..joined.len()).filter(|&r| !joined[r]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A free loopback port (released before use: a race no test here loses).
    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn at(address: &str, rank: usize, world_size: usize) -> Rendezvous {
        Rendezvous {
            address: address.into(),
            rank,
            world_size,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn every_rank_gets_rank_zeros_payload() {
        let address = free_address();
        // The others start first: they retry until rank 0 listens.
        let others: Vec<_> = (1..4)
            .map(|rank| {
                let r = at(&address, rank, 4);
                thread::spawn(move || r.share(&[0; 16]))
            })
            .collect();
        let secret: Vec<u8> = (0..16).collect();
        assert_eq!(at(&address, 0, 4).share(&secret).unwrap(), secret);
        for other in others {
            assert_eq!(other.join().unwrap().unwrap(), secret);
        }
    }

    #[test]
    fn a_rank_with_another_world_size_is_refused_with_both_sizes() {
        let address = free_address();
        let other = {
            let r = at(&address, 1, 3);
            thread::spawn(move || r.share(&[0; 4]))
        };
        let err = at(&address, 0, 2).share(&[7; 4]).unwrap_err().to_string();
        assert!(err.contains("world size of 3, rank 0 with 2"), "{err}");
        let err = other.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("refused rank 1"), "{err}");
    }

    #[test]
    fn a_missing_rank_times_out_naming_it() {
        let address = free_address();
        let mut r = at(&address, 0, 3);
        r.timeout = Duration::from_millis(300);
        let other = {
            let r = at(&address, 2, 3);
            thread::spawn(move || r.share(&[0; 4]))
        };
        let err = r.share(&[1; 4]).unwrap_err().to_string();
        assert!(err.contains("ranks [1]"), "{err}");
        assert_eq!(other.join().unwrap().unwrap(), vec![1; 4]);
    }

    #[test]
    fn nobody_listening_is_an_error_not_a_hang() {
        let mut r = at(&free_address(), 1, 2);
        r.timeout = Duration::from_millis(300);
        let err = r.share(&[0; 4]).unwrap_err().to_string();
        assert!(err.contains("could not reach rank 0"), "{err}");
        let err = at("127.0.0.1:1", 2, 2)
            .share(&[0; 4])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit a world size of 2"), "{err}");
    }
}
