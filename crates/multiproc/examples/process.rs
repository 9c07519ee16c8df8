//! Processes: start a function in a child under each start method, get its
//! result back, and see what happens when a child panics or is killed.
//!
//! Run with `cargo run --example process`.

use std::time::Duration;

use multiproc::{JoinError, Process, StartMethod, current_process};

fn square(x: u64) -> u64 {
    x * x
}

fn whoami(_: ()) -> (String, i32) {
    let me = current_process();
    (me.name, me.pid)
}

fn explode(_: ()) -> u64 {
    panic!("this child gives up")
}

fn forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("parent: {:?}", current_process());
    for method in StartMethod::ALL {
        let p = Process::builder().start_method(method).spawn(square, 12)?;
        println!("{method:>10}: square(12) = {}", p.join()?);
        let (name, pid) = Process::builder()
            .start_method(method)
            .spawn(whoami, ())?
            .join()?;
        println!("{method:>10}: child said it is {name} (pid {pid})");
    }

    match Process::spawn(explode, ())?.join() {
        Err(JoinError::Panicked(report)) => println!("panic came back as a value: {report}"),
        other => println!("unexpected: {other:?}"),
    }

    let p = Process::spawn(forever, ())?;
    p.kill()?;
    match p.join() {
        Err(JoinError::Signaled { signal, .. }) => println!("a killed child reports {signal}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
