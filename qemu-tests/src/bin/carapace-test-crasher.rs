//! Guest-side probe of the test image: a service that crashes shortly after
//! every start, so the tests can watch PID 1 restart it with backoff.

fn main() {
    println!("crasher: started");
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::process::exit(3);
}
