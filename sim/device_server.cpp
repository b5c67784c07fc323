// The simulated device: a Verilated SimulatedSoC (MoESoC on the backing-memory model, or any
// design with its ports) served over TCP.
//
// Built by moeforge.sim.sim_device (verilator --cc --exe --build --prefix Vtop ...). The top
// module (the design in a wrapper registering rst) has the ports of SimulatedSoC with phy="stream":
//
//   clk, rst                              the sync domain (synchronous reset)
//   rx__valid, rx__ready, rx__payload[7:0]  bytes into the device (taken when valid & ready
//                                           at a rising edge of clk)
//   tx__valid, tx__ready, tx__payload[7:0]  bytes out of the device
//   busy                                  1 while the device has work
//
// Verilator writes a Verilog name holding "__" as "___05F" in C++; the PORT_* macros below
// name the members and can be overridden with -D.
//
// Usage: device_server [--host H] [--port P] [--once] [--die-with-parent] [--parent-pid N]
//                      [--idle-timeout S] [--stats]
//
// Prints "LISTENING <port>" on stdout once listening (nothing else goes to stdout). Serves one
// connection at a time. A client connecting while another is served is told so at once: it is
// accepted, sent the line BUSY_LINE below, its write side is shut down and it is closed (after it
// closes, or after REJECT_LINGER_S). --idle-timeout S drops the client being served once the device
// has been idle, its answers written, with nothing received for S seconds (one "device_server:
// dropped ..." line on stderr); the default 0 never drops one. Each byte received is fed to rx (one
// per cycle while rx__ready), each byte of tx goes back on the socket. The design is clocked in
// this loop only while it has something to do (busy, bytes waiting for rx, or tx__valid); when idle
// the server sleeps in poll(); while clocking it checks the socket every POLL_EVERY (1024) cycles
// and at once when the bytes it holds for rx run out (so a gap in the input costs at most ~1024
// cycles, well under the link's receive timeout). tx bytes are written in batches, when tx has been
// quiet for OUT_QUIET cycles or 16 KiB are waiting; tx__ready drops while 256 KiB are unwritten (a
// peer that does not read stops the clock). A connection whose peer stops sending (EOF) is kept
// until the device is idle and its output is written, so a client may shut down its write side and
// read the answers. The device is not reset between connections (a board that stays powered); what
// it sends while no one is connected is lost, as on a UART. --once exits 0 once the first
// connection is closed. SIGTERM/SIGINT end the server promptly (exit 0), --die-with-parent makes
// the kernel send SIGTERM when the parent dies (the parent *thread* that forked it:
// moeforge.sim.child_process forks from a thread that lives as long as the process); --parent-pid N
// exits at once if the parent is not N any more (it died before the prctl). --stats prints a STATS
// line on stderr after each connection and at exit (cycles, busy cycles, seconds spent clocking,
// cycles/s, CPU seconds of the process and cycles per CPU second).
// Socket errors print one "device_server: ..." line on stderr and exit 1.

#include "Vtop.h"
#include "verilated.h"

#include <arpa/inet.h>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <memory>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

#ifndef PORT_RX_VALID
#define PORT_RX_VALID rx___05Fvalid
#define PORT_RX_READY rx___05Fready
#define PORT_RX_PAYLOAD rx___05Fpayload
#define PORT_TX_VALID tx___05Fvalid
#define PORT_TX_READY tx___05Fready
#define PORT_TX_PAYLOAD tx___05Fpayload
#endif

namespace {

constexpr int RESET_CYCLES = 4;
constexpr unsigned POLL_EVERY = 1024;      // cycles between socket checks while clocking
constexpr size_t IN_CAP = 64 * 1024;       // bytes read from the socket ahead of rx
constexpr size_t OUT_FLUSH = 16 * 1024;    // write once this much tx is collected ...
constexpr unsigned OUT_QUIET = 64;         // ... or tx has been quiet this many cycles
constexpr size_t OUT_CAP = 256 * 1024;     // tx__ready drops while this much is unwritten
constexpr size_t MAX_REJECTED = 16;        // clients being turned away at once; more are closed
constexpr double REJECT_LINGER_S = 2.0;    // how long a turned-away client may take to close
// The one line a second client gets (the host runtime shows it).
constexpr char BUSY_LINE[] =
    "moeforge device busy: another client is connected (the simulated device serves one "
    "client at a time)\n";

volatile sig_atomic_t g_signal = 0;

void on_signal(int sig) { g_signal = sig; }

[[noreturn]] void fail(const std::string& what, int err) {
    std::fprintf(stderr, "device_server: %s: %s\n", what.c_str(), std::strerror(err));
    std::exit(1);
}

double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    bool once = false;
    bool die_with_parent = false;
    long parent_pid = 0;
    double idle_timeout_s = 0;
    bool stats = false;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "device_server: %s\nusage: device_server [--host H] [--port P] [--once] "
                 "[--die-with-parent] [--parent-pid N] [--idle-timeout S] [--stats]\n",
                 msg);
    std::exit(2);
}

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--once") {
            o.once = true;
        } else if (a == "--die-with-parent") {
            o.die_with_parent = true;
        } else if (a == "--stats") {
            o.stats = true;
        } else if (a == "--host" || a == "--port" || a == "--parent-pid" || a == "--idle-timeout") {
            if (i + 1 >= argc) usage((a + " needs a value").c_str());
            std::string v = argv[++i];
            char* end = nullptr;
            if (a == "--host") {
                o.host = v;
            } else if (a == "--parent-pid") {
                long p = std::strtol(v.c_str(), &end, 10);
                if (v.empty() || *end || p <= 0)
                    usage(("--parent-pid must be a pid, not " + v).c_str());
                o.parent_pid = p;
            } else if (a == "--idle-timeout") {
                double t = std::strtod(v.c_str(), &end);
                if (v.empty() || *end || !(t >= 0) || t > 1e9)
                    usage(("--idle-timeout must be seconds >= 0, not " + v).c_str());
                o.idle_timeout_s = t;
            } else {
                long p = std::strtol(v.c_str(), &end, 10);
                if (v.empty() || *end || p < 0 || p > 65535)
                    usage(("--port must be 0..65535, not " + v).c_str());
                o.port = static_cast<int>(p);
            }
        } else if (a == "--help" || a == "-h") {
            usage("the simulated moeforge device over TCP");
        } else {
            usage(("unknown argument " + a).c_str());
        }
    }
    return o;
}

int listen_on(const Options& o, int* port_out) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    std::string port = std::to_string(o.port);
    int rc = getaddrinfo(o.host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
        std::fprintf(stderr, "device_server: cannot resolve host %s: %s\n", o.host.c_str(),
                     gai_strerror(rc));
        std::exit(1);
    }
    int fd = -1, err = 0;
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 8) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) fail("cannot listen on " + o.host + ":" + port, err);
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) fail("getsockname", errno);
    *port_out = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    return fd;
}

class Server {
public:
    Server(const Options& opts, int listen_fd, sigset_t wait_mask)
        : opts_(opts), listen_fd_(listen_fd), wait_mask_(wait_mask), in_(IN_CAP) {
        ctx_ = std::make_unique<VerilatedContext>();
        top_ = std::make_unique<Vtop>(ctx_.get(), "device");
        out_.reserve(OUT_CAP);
        reset();
    }

    ~Server() { top_->final(); }

    int run() {
        start_s_ = now_s();
        unsigned countdown = POLL_EVERY;
        while (!g_signal) {
            // ---- one clock cycle ----
            const bool have_in = in_head_ < in_tail_;
            const bool tx_room = out_.size() - out_off_ < OUT_CAP;
            top_->PORT_RX_VALID = have_in;
            top_->PORT_RX_PAYLOAD = have_in ? in_[in_head_] : 0;
            top_->PORT_TX_READY = tx_room;
            top_->clk = 0;
            top_->eval();
            const bool rx_take = have_in && top_->PORT_RX_READY;
            const bool tx_take = tx_room && top_->PORT_TX_VALID;
            const uint8_t tx_byte = top_->PORT_TX_PAYLOAD;
            top_->clk = 1;
            top_->eval();
            ++cycles_;
            busy_cycles_ += top_->busy & 1;
            if (tx_take) {
                if (client_ >= 0) out_.push_back(tx_byte);  // no one listening: the byte is lost
                quiet_ = 0;
            } else {
                ++quiet_;
            }
            if (rx_take && ++in_head_ == in_tail_) {
                in_head_ = in_tail_ = 0;
                if (client_ >= 0 && !rd_closed_) wait_events(0);  // refill at once if bytes wait
            }

            // ---- host side ----
            const bool idle = !(top_->busy & 1) && in_head_ == in_tail_ && !top_->PORT_TX_VALID;
            if (idle) {
                on_idle();
                countdown = POLL_EVERY;
                continue;
            }
            idle_ = false;
            const size_t pending = out_.size() - out_off_;
            if (pending && (pending >= OUT_FLUSH || quiet_ >= OUT_QUIET)) flush();
            if (!tx_room && out_.size() - out_off_ >= OUT_CAP) {
                wait_events(-1);  // the peer does not read: stop the clock until it does
            } else if (--countdown == 0) {
                countdown = POLL_EVERY;
                wait_events(0);
            }
        }
        flush();
        std::fprintf(stderr, "device_server: stopped by signal %d\n", static_cast<int>(g_signal));
        if (opts_.stats) print_stats("exit");
        return 0;
    }

private:
    void reset() {
        top_->PORT_RX_VALID = 0;
        top_->PORT_TX_READY = 0;
        top_->rst = 1;
        for (int i = 0; i < RESET_CYCLES; ++i) {
            top_->clk = 0;
            top_->eval();
            top_->clk = 1;
            top_->eval();
        }
        // Idle cycles out of reset before the first byte: the build's wrapper registers rst,
        // so the design itself leaves reset one cycle after rst drops.
        top_->rst = 0;
        for (int i = 0; i < 2; ++i) {
            top_->clk = 0;
            top_->eval();
            top_->clk = 1;
            top_->eval();
        }
    }

    // Idle design: write what is left, end a finished connection (or one idle too long), else
    // sleep until a socket has something.
    void on_idle() {
        flush();
        if (client_ >= 0 && rd_closed_ && out_off_ == out_.size()) {
            close_client();
            return;
        }
        const double now = now_s();
        if (!idle_) {
            idle_ = true;
            heard_s_ = now;  // the idle clock starts when the device has nothing left to do
        }
        int timeout_ms = -1;
        if (client_ >= 0 && opts_.idle_timeout_s > 0) {
            const double left = heard_s_ + opts_.idle_timeout_s - now;
            if (left <= 0) {
                std::fprintf(stderr, "device_server: dropped a client idle for %g s\n",
                             opts_.idle_timeout_s);
                std::fflush(stderr);
                close_client();
                return;
            }
            timeout_ms = static_cast<int>(std::min(left * 1000.0 + 1.0, 1e9));
        }
        wait_events(timeout_ms);
    }

    // poll() the listening socket, the client (if any) and clients being turned away;
    // timeout_ms -1 blocks. Signals are blocked except inside ppoll, so a SIGTERM wakes any
    // wait and ends the loop. While the client is leaving (it sent EOF), the listening socket
    // is not watched: a client connecting then waits to be served, it is not turned away.
    void wait_events(int timeout_ms) {
        pollfd pfds[2 + MAX_REJECTED];
        nfds_t n = 0;
        const bool watch_listen = client_ < 0 || !rd_closed_;
        if (watch_listen) pfds[n++] = {listen_fd_, POLLIN, 0};
        const nfds_t client_slot = n;
        if (client_ >= 0) {
            pollfd c{client_, 0, 0};
            if (!rd_closed_ && in_tail_ < IN_CAP) c.events |= POLLIN;
            if (out_off_ < out_.size()) c.events |= POLLOUT;
            // Nothing to wait for on the client (should not happen when idle): a short sleep
            // instead of a busy loop.
            if (!c.events && timeout_ms != 0)
                timeout_ms = timeout_ms < 0 ? 10 : std::min(timeout_ms, 10);
            pfds[n++] = c;
        }
        const nfds_t rejected_slot = n;
        if (!rejected_.empty()) {
            double first = rejected_.front().deadline_s;
            for (const Rejected& r : rejected_) {
                pfds[n++] = {r.fd, POLLIN, 0};
                first = std::min(first, r.deadline_s);
            }
            const int until = static_cast<int>(std::max(0.0, first - now_s()) * 1000.0) + 1;
            if (timeout_ms < 0 || until < timeout_ms) timeout_ms = until;
        }
        timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
        const double t0 = timeout_ms ? now_s() : 0.0;
        int ready = ppoll(pfds, n, timeout_ms < 0 ? nullptr : &ts, &wait_mask_);
        if (timeout_ms) blocked_s_ += now_s() - t0;
        if (ready < 0) {
            if (errno == EINTR) return;
            fail("poll", errno);
        }
        if (!rejected_.empty()) serve_rejected(pfds + rejected_slot);
        if (ready > 0 && client_ >= 0 && n > client_slot && pfds[client_slot].fd == client_) {
            const short ev = pfds[client_slot].revents;
            if (ev & (POLLIN | POLLHUP | POLLERR)) receive();
            if (client_ >= 0 && (ev & (POLLOUT | POLLERR | POLLHUP))) flush();
        }
        if (ready > 0 && watch_listen && (pfds[0].revents & POLLIN)) {
            if (client_ < 0) accept_client();
            // Anyone else waiting is told at once, unless the client just sent EOF (it is
            // leaving: the next one waits its turn).
            if (client_ >= 0 && !rd_closed_) turn_away_pending();
        }
    }

    // Accept every connection waiting on the listening socket and tell it the device is busy.
    void turn_away_pending() {
        while (true) {
            int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED ||
                    errno == EINTR || errno == EPROTO)
                    return;
                fail("accept", errno);
            }
            (void)send(fd, BUSY_LINE, sizeof BUSY_LINE - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
            shutdown(fd, SHUT_WR);
            ++turned_away_;
            if (rejected_.size() >= MAX_REJECTED) {
                close(fd);
                continue;
            }
            // Kept open until the peer closes: closing with its bytes unread would reset the
            // connection, and a reset can discard the line before the peer reads it.
            rejected_.push_back({fd, now_s() + REJECT_LINGER_S});
        }
    }

    // Drain what turned-away clients send; close them at their EOF or their deadline.
    void serve_rejected(const pollfd* pfds) {
        const double now = now_s();
        std::vector<Rejected> keep;
        for (size_t i = 0; i < rejected_.size(); ++i) {
            const Rejected& r = rejected_[i];
            bool done = now >= r.deadline_s;
            if (!done && (pfds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                char sink[4096];
                ssize_t got = recv(r.fd, sink, sizeof sink, MSG_DONTWAIT);
                done = got == 0 ||
                       (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
            }
            if (done) {
                close(r.fd);
            } else {
                keep.push_back(r);
            }
        }
        rejected_.swap(keep);
    }

    void accept_client() {
        int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EINTR ||
                errno == EPROTO)
                return;
            fail("accept", errno);
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        client_ = fd;
        rd_closed_ = false;
        heard_s_ = now_s();
        out_.clear();
        out_off_ = 0;
        conn_start_cycles_ = cycles_;
        ++connections_;
    }

    void receive() {
        if (rd_closed_) return;
        if (in_head_ == in_tail_) {
            in_head_ = in_tail_ = 0;
        } else if (in_head_ > 0 && in_tail_ == IN_CAP) {
            std::memmove(in_.data(), in_.data() + in_head_, in_tail_ - in_head_);
            in_tail_ -= in_head_;
            in_head_ = 0;
        }
        if (in_tail_ == IN_CAP) return;
        ssize_t n = recv(client_, in_.data() + in_tail_, IN_CAP - in_tail_, MSG_DONTWAIT);
        if (n > 0) {
            in_tail_ += static_cast<size_t>(n);
            heard_s_ = now_s();
        } else if (n == 0) {
            rd_closed_ = true;  // the peer sends no more; answers still go out
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close_client();  // reset by the peer
        }
    }

    void flush() {
        while (client_ >= 0 && out_off_ < out_.size()) {
            ssize_t n = send(client_, out_.data() + out_off_, out_.size() - out_off_,
                             MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n >= 0) {
                out_off_ += static_cast<size_t>(n);
            } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                break;
            } else {
                close_client();  // EPIPE, ECONNRESET: the peer is gone
                return;
            }
        }
        if (out_off_ == out_.size()) {
            out_.clear();
            out_off_ = 0;
        } else if (out_off_ >= OUT_CAP) {
            out_.erase(out_.begin(), out_.begin() + static_cast<long>(out_off_));
            out_off_ = 0;
        }
    }

    void close_client() {
        if (client_ < 0) return;
        close(client_);
        client_ = -1;
        out_.clear();
        out_off_ = 0;
        if (opts_.stats) print_stats("connection");
        if (opts_.once) {
            if (opts_.stats) print_stats("exit");
            top_->final();
            std::fflush(stderr);
            std::_Exit(0);
        }
    }

    void print_stats(const char* what) {
        const double clocked = now_s() - start_s_ - blocked_s_;
        timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        const double cpu = ts.tv_sec + ts.tv_nsec * 1e-9;
        std::fprintf(stderr,
                     "STATS %s cycles=%llu busy_cycles=%llu connection_cycles=%llu "
                     "clocked_s=%.3f cycles_per_s=%.0f cpu_s=%.3f cycles_per_cpu_s=%.0f "
                     "connections=%llu turned_away=%llu\n",
                     what, static_cast<unsigned long long>(cycles_),
                     static_cast<unsigned long long>(busy_cycles_),
                     static_cast<unsigned long long>(cycles_ - conn_start_cycles_), clocked,
                     clocked > 0 ? cycles_ / clocked : 0.0, cpu, cpu > 0 ? cycles_ / cpu : 0.0,
                     static_cast<unsigned long long>(connections_),
                     static_cast<unsigned long long>(turned_away_));
        std::fflush(stderr);
    }

    const Options& opts_;
    int listen_fd_;
    sigset_t wait_mask_;
    std::unique_ptr<VerilatedContext> ctx_;
    std::unique_ptr<Vtop> top_;

    struct Rejected {
        int fd;
        double deadline_s;
    };

    int client_ = -1;
    bool rd_closed_ = false;
    bool idle_ = false;
    double heard_s_ = 0;  // last byte received, accept, or the device going idle
    std::vector<Rejected> rejected_;
    std::vector<uint8_t> in_;
    size_t in_head_ = 0, in_tail_ = 0;
    std::vector<uint8_t> out_;
    size_t out_off_ = 0;
    unsigned quiet_ = 0;

    uint64_t cycles_ = 0, busy_cycles_ = 0, conn_start_cycles_ = 0, connections_ = 0,
             turned_away_ = 0;
    double start_s_ = 0, blocked_s_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
    Options opts = parse_args(argc, argv);
    if (opts.die_with_parent) {
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) fail("prctl(PR_SET_PDEATHSIG)", errno);
        // The parent died before the prctl: the child was re-parented (to init or a subreaper).
        if (opts.parent_pid ? getppid() != opts.parent_pid : getppid() == 1) return 1;
    }
    std::signal(SIGPIPE, SIG_IGN);
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    // Block the stop signals; they are delivered only inside ppoll (with wait_mask), which the
    // loop enters at least every POLL_EVERY cycles, so there is no lost-wakeup race.
    sigset_t stop, wait_mask;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);

    int port = 0;
    int listen_fd = listen_on(opts, &port);
    Server server(opts, listen_fd, wait_mask);
    std::printf("LISTENING %d\n", port);
    std::fflush(stdout);
    int rc = server.run();
    close(listen_fd);
    return rc;
}
