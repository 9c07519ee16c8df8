//! What a hostile peer can do with the handles and limits that travel on a
//! connection (issue 14, defect 10): send more descriptors than a message
//! may carry (an error, never a silent loss, and no descriptor leaks), or
//! send a connection whose message-size limit it chose (the receiver keeps
//! its own).

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use common::{LIMIT, deadline, temp_path};
use multiproc::{Address, Connection, Listener, RecvError, pipe};

/// More than the 64 descriptors one message may carry, fewer than the
/// kernel's own limit (253) on one `sendmsg`.
const TOO_MANY: usize = 100;

/// Sends `bytes` with `fds` attached, in one `sendmsg`, as a raw peer would.
fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields are set below to
    // buffers that outlive the call. CMSG_FIRSTHDR points into `control`,
    // which has room for one header and `data_len` bytes (CMSG_SPACE).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), raw.len());
        libc::sendmsg(sock.as_raw_fd(), &raw const msg, 0)
    };
    assert_eq!(
        sent,
        bytes.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// Held by every test of this file: descriptor counts are per process, and
/// the tests of one file run in parallel threads of one process.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn null_fds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| std::fs::File::open("/dev/null").unwrap().into())
        .collect()
}

#[test]
fn more_descriptors_than_fit_are_an_error_on_a_socket_connection() {
    deadline(LIMIT, || {
        let _serial = serial();
        let path = temp_path("fds");
        let listener = Listener::bind(&Address::Unix(path.clone()), None).unwrap();
        let raw = UnixStream::connect(&path).unwrap();
        let conn: Connection<(), ()> = listener.accept().unwrap();
        drop(listener);
        let before = open_fds();
        let fds = null_fds(TOO_MANY);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        // A CPython frame of 5 bytes, with 100 descriptors on its first byte.
        let mut frame = 5i32.to_be_bytes().to_vec();
        frame.extend_from_slice(b"hello");
        send_with_fds(raw.as_fd(), &frame, &borrowed);
        drop(borrowed);
        drop(fds);
        match conn.recv_bytes() {
            Err(RecvError::TooManyHandles) => {}
            other => panic!("expected TooManyHandles, got {other:?}"),
        }
        // The 64 that arrived were closed, not kept or leaked.
        assert_eq!(open_fds(), before, "received descriptors leaked");
        drop((conn, raw));
    });
}

#[test]
fn more_descriptors_than_fit_are_an_error_on_a_pipe() {
    deadline(LIMIT, || {
        let _serial = serial();
        let (ours, theirs) = pipe::<u32, u32>().unwrap();
        let before = open_fds();
        let fds = null_fds(TOO_MANY);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        // The peer's wake-up socket is what a pipe end exposes: a hostile
        // holder of that end writes a token with too many descriptors.
        send_with_fds(theirs.as_fd(), &[0], &borrowed);
        drop(borrowed);
        drop(fds);
        match ours.recv_timeout(std::time::Duration::from_secs(5)) {
            Err(multiproc::RecvTimeoutError::Recv(RecvError::TooManyHandles)) => {}
            other => panic!("expected TooManyHandles, got {other:?}"),
        }
        assert_eq!(open_fds(), before, "received descriptors leaked");
    });
}

#[test]
fn a_received_connection_keeps_the_receivers_default_limit() {
    deadline(LIMIT, || {
        let _serial = serial();
        let (tx, rx) = pipe::<Connection<(), ()>, Connection<(), ()>>().unwrap();

        // A sender lowers the limit of the end it sends: the receiver must
        // still accept an ordinary message on it.
        let (near, far) = pipe::<(), ()>().unwrap();
        far.set_max_message_size(4);
        tx.send(&far).unwrap();
        drop(far);
        let far = rx.recv().unwrap();
        near.send_bytes(&[7u8; 100]).unwrap();
        assert_eq!(far.recv_bytes().unwrap(), vec![7u8; 100]);

        // A hostile sender lifts the limit of a socket end to u64::MAX and
        // then announces a 3 GiB message on it: the receiver refuses it by
        // its own default limit (2 GiB), before allocating anything.
        let path = temp_path("limit");
        let listener = Listener::bind(&Address::Unix(path.clone()), None).unwrap();
        let mut raw = UnixStream::connect(&path).unwrap();
        let accepted: Connection<(), ()> = listener.accept().unwrap();
        drop(listener);
        accepted.set_max_message_size(u64::MAX);
        tx.send(&accepted).unwrap();
        drop(accepted);
        let received = rx.recv().unwrap();
        let mut header = (-1i32).to_be_bytes().to_vec();
        header.extend_from_slice(&(3u64 << 30).to_be_bytes());
        raw.write_all(&header).unwrap();
        drop(raw);
        match received.recv_bytes() {
            Err(RecvError::TooLarge { len, limit }) => {
                assert_eq!(len, 3 << 30);
                assert_eq!(limit, 2 << 30);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    });
}
