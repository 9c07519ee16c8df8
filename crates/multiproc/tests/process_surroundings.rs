//! Every start method gives the child the parent's current directory and
//! environment at the time of the start, as CPython's do: the forkserver's
//! children too, although the server started earlier, elsewhere.
//! (One test alone in its binary: it changes the process's directory.)

mod common;

use common::{LIMIT, deadline, temp_path};
use multiproc::{Process, StartMethod};

fn read_here(_: ()) -> (Option<String>, Option<String>) {
    (
        std::fs::read_to_string("data.txt").ok(),
        std::env::var("MULTIPROC_TEST_MARK").ok(),
    )
}

#[test]
fn children_start_in_the_parents_directory_with_its_environment() {
    deadline(LIMIT, || {
        // The forkserver starts here, before the moves below.
        for m in StartMethod::ALL {
            let _ = Process::builder()
                .start_method(m)
                .spawn(read_here, ())
                .unwrap()
                .join()
                .unwrap();
        }
        let original = std::env::current_dir().unwrap();
        for m in StartMethod::ALL {
            let dir = temp_path(&format!("cwd-{m}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("data.txt"), format!("data for {m}")).unwrap();
            std::env::set_current_dir(&dir).unwrap();
            // SAFETY: no other thread of this test binary reads or writes
            // the environment while this one test runs.
            unsafe { std::env::set_var("MULTIPROC_TEST_MARK", format!("mark {m}")) };
            let got = Process::builder()
                .start_method(m)
                .spawn(read_here, ())
                .unwrap()
                .join()
                .unwrap();
            std::env::set_current_dir(&original).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            assert_eq!(
                got,
                (Some(format!("data for {m}")), Some(format!("mark {m}"))),
                "{m}"
            );
        }
        // SAFETY: as above.
        unsafe { std::env::remove_var("MULTIPROC_TEST_MARK") };
        let got = Process::spawn(read_here, ()).unwrap().join().unwrap();
        assert_eq!(
            got.1, None,
            "a variable removed in the parent stays in the child"
        );
    });
}
