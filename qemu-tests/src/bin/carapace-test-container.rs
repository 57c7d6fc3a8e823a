//! carapace-test-container: the program inside the test container image
//! (`cargo xtask test` packs it as an OCI image and pushes it to a registry
//! on the host). Its first argument says what to do:
//!
//! - `serve <port> <word>` (the default, port 8080, word `pong`): prints
//!   `hello from the test container (<word>)`, then answers every TCP
//!   connection on 0.0.0.0:<port> with `<word>\n` and prints `served <n>`;
//!   a client whose first line is `crash` gets `crashing` and the server
//!   dies at once with status 3 (it cannot kill itself: as the first process
//!   of its PID namespace it is immune to its own signals);
//! - `eat <MiB>`: prints `eating <MiB> MiB`, then touches that much memory a
//!   MiB at a time, printing `ate <n> MiB` — under a smaller memory.max the
//!   kernel kills it;
//! - `exit <code>`: prints `exiting with <code>` and exits with it.

use std::io::Write;

fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn serve(port: u16, word: &str) -> std::process::ExitCode {
    say(&format!("hello from the test container ({word})"));
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("cannot listen on port {port}: {e}"));
            return std::process::ExitCode::from(2);
        }
    };
    say(&format!("listening on port {port}"));
    let mut served = 0u64;
    for mut s in listener.incoming().flatten() {
        let mut first = String::new();
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if let Ok(clone) = s.try_clone() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(clone), &mut first);
        }
        if first.trim() == "crash" {
            let _ = s.write_all(b"crashing\n");
            let _ = s.shutdown(std::net::Shutdown::Both);
            say("crashing with status 3");
            std::process::exit(3);
        }
        let _ = s.write_all(format!("{word}\n").as_bytes());
        served += 1;
        say(&format!("served {served}"));
    }
    std::process::ExitCode::SUCCESS
}

fn eat(mib: usize) -> std::process::ExitCode {
    say(&format!("eating {mib} MiB"));
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    for n in 1..=mib {
        // Written, so the pages are really in use.
        hoard.push(vec![n as u8; 1 << 20]);
        if n % 8 == 0 {
            say(&format!("ate {n} MiB"));
        }
    }
    say(&format!("ate all {} MiB", hoard.len()));
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => serve(8080, "pong"),
        Some("serve") => {
            let port = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(8080);
            let word = args.get(2).map(String::as_str).unwrap_or("pong");
            serve(port, word)
        }
        Some("eat") => eat(args.get(1).and_then(|m| m.parse().ok()).unwrap_or(256)),
        Some("exit") => {
            let code: u8 = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            say(&format!("exiting with {code}"));
            std::process::ExitCode::from(code)
        }
        Some(other) => {
            say(&format!("unknown command {other:?}"));
            std::process::ExitCode::from(2)
        }
    }
}
