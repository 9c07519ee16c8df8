//! A manager shares a dict and a list among several processes: workers
//! count the words of their share of a text into one dict, log what they
//! did into one list, and tally through a user-defined shared type. Then a
//! second client attaches to the same manager by address over TCP, and a
//! pool that lives in the manager squares the word lengths.
//!
//! Run with `cargo run --example manager`. With `--serve PATH` it only
//! serves a manager on the Unix socket PATH (auth key `demo key`) until its
//! standard input closes: a server of another build for the tests.

use multiproc::{
    DictProxy, ListProxy, Manager, ObjectProxy, Process, SharedObject, StartMethod, current_process,
};
use serde::{Deserialize, Serialize};

const TEXT: &str = "the quick brown fox jumps over the lazy dog \
                    the dog barks and the fox runs \
                    a quick fox is a happy fox";

/// A user-defined shared type: the highest word count seen, and by whom.
#[derive(Default)]
struct Leader {
    word: String,
    count: u32,
}

#[derive(Serialize, Deserialize)]
enum LeaderCall {
    /// Offers a word and its count; the leader keeps the larger.
    Offer(String, u32),
    /// Asks for the leader.
    Get,
}

impl SharedObject for Leader {
    type Init = ();
    type Call = LeaderCall;
    type Reply = (String, u32);

    fn create((): ()) -> Self {
        Leader::default()
    }

    fn call(&mut self, call: LeaderCall) -> (String, u32) {
        if let LeaderCall::Offer(word, count) = call
            && count > self.count
        {
            (self.word, self.count) = (word, count);
        }
        (self.word.clone(), self.count)
    }
}

type Shared = (
    Vec<String>,
    DictProxy<String, u32>,
    ListProxy<String>,
    ObjectProxy<Leader>,
);

/// Counts its words into the shared dict, offers each new count to the
/// leader, and logs one line.
fn count_words((words, counts, log, leader): Shared) -> usize {
    for word in &words {
        // Read, add, write back: another worker may write in between, so
        // the dict's total can come out short. The leader, which runs each
        // call alone on the server, never misses an update it was offered.
        let n = counts.get(word.as_str()).unwrap().unwrap_or(0) + 1;
        counts.insert(word.clone(), n).unwrap();
        leader.call(LeaderCall::Offer(word.clone(), n)).unwrap();
    }
    log.push(format!(
        "{} counted {} words",
        current_process().name,
        words.len()
    ))
    .unwrap();
    words.len()
}

/// A task the manager's pool may run: registered by name, so a client of
/// the same build can name it to the server.
#[multiproc::task(name = "demo.square")]
fn square(x: u64) -> u64 {
    x * x
}

/// Serves a manager on `path` until standard input closes.
fn serve(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let manager = Manager::builder().unix(path).authkey(b"demo key").start()?;
    println!("listening on {}", manager.address());
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())?;
    manager.shutdown()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path] = &args[..]
        && flag == "--serve"
    {
        return serve(path);
    }
    let manager = Manager::builder()
        .start_method(StartMethod::Spawn)
        .tcp("127.0.0.1:0".parse()?, b"example key")
        .register::<Leader>("leader")
        .start()?;
    println!("manager listening on {}", manager.address());

    let counts = manager.dict::<String, u32>()?;
    let log = manager.list::<String>()?;
    let leader = manager.create::<Leader>("leader", ())?;

    let words: Vec<String> = TEXT.split_whitespace().map(String::from).collect();
    let workers: Vec<_> = words
        .chunks(words.len().div_ceil(3))
        .map(|share| {
            let arg = (share.to_vec(), counts.clone(), log.clone(), leader.clone());
            Process::spawn(count_words, arg)
        })
        .collect::<Result<_, _>>()?;
    let mut total = 0;
    for w in workers {
        total += w.join()?;
    }
    println!("{} workers counted {total} words", log.len()?);
    for line in log.snapshot()? {
        println!("  {line}");
    }

    // Another program would do this, knowing the address and the key.
    let other = Manager::connect(manager.address(), b"example key")?;
    let summary = other.list::<(String, u32)>()?;
    let mut items = counts.items()?;
    items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    summary.extend(items.iter().take(3).cloned())?;
    println!("top words, via a second client: {:?}", summary.snapshot()?);
    let (word, count) = leader.call(LeaderCall::Get)?;
    println!("the leader: {word:?} with {count}");

    // A pool in the manager's process, for every client.
    let pool = other.pool(2)?;
    let lengths: Vec<u64> = words.iter().map(|w| w.len() as u64).collect();
    let squares = pool.map(square, lengths)?;
    println!(
        "the manager's pool squared {} word lengths: sum {}",
        squares.len(),
        squares.iter().sum::<u64>()
    );
    drop(pool);

    manager.shutdown()?;
    println!("manager shut down");
    Ok(())
}
