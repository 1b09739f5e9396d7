package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"tend.dev/tend/internal/adminconf"
)

// ControlPlane is a control plane the bench talks to: one it started (a
// real tend-controlplane binary, or the profiling wrapper) or an existing
// one given by address.
type ControlPlane struct {
	// Addr is the gRPC address (agents and admin API).
	Addr string
	// MetricsURL is its /metrics ("" if unknown).
	MetricsURL string
	// PprofURL is the profiling wrapper's base URL ("" if not profiling).
	PprofURL string
	// AdminConf is the path of an admin.conf for it.
	AdminConf string

	// Set when the bench started it.
	proc *cpProcess
	// PID of an existing control plane, if given (0: unknown).
	pid int
}

// PID is the control plane's process id, 0 if unknown.
func (c *ControlPlane) PID() int {
	if c.proc != nil {
		return c.proc.pid()
	}
	return c.pid
}

// Owned reports whether the bench started this control plane (and so may
// restart and stop it).
func (c *ControlPlane) Owned() bool { return c.proc != nil }

// LogPath is the started control plane's log file ("" otherwise).
func (c *ControlPlane) LogPath() string {
	if c.proc == nil {
		return ""
	}
	return c.proc.logPath
}

// SpawnOptions say how to start a control plane.
type SpawnOptions struct {
	// Env is added to the bench's environment for the control plane
	// (e.g. GOGC=200).
	Env []string
	// Command is argv up to (not including) the control plane's flags:
	// ["bin/tend-controlplane"], or [tend-bench, "controlplane"] to profile.
	Command []string
	// DataDir is the control plane's data dir (kept across restarts).
	DataDir string
	// Args are extra flags (e.g. --log-level warn).
	Args []string
	// Pprof: the command serves net/http/pprof on --pprof-listen.
	Pprof bool
	// ReadyTimeout bounds the wait for /healthz (default 2m: a restart
	// loads every agent).
	ReadyTimeout time.Duration
	// Perf, if set, is the perf binary: the control plane then runs under
	// `perf stat` counting its fsync and fdatasync system calls (attaching
	// perf to a running process does not count anything on this kind of
	// VM; a workload started by perf is counted).
	Perf string
}

type cpProcess struct {
	opts     SpawnOptions
	listen   string
	http     string
	pprof    string
	logPath  string
	mu       sync.Mutex
	cmd      *exec.Cmd // the control plane, or perf running it
	cpPid    int       // the control plane's pid
	perfOut  string    // perf's output file ("" without perf)
	starts   int
	done     chan struct{}
	startErr error
}

func (p *cpProcess) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cpPid
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// SpawnControlPlane starts a control plane on opts.DataDir, on free
// loopback ports, and waits until it answers /healthz.
func SpawnControlPlane(ctx context.Context, opts SpawnOptions) (*ControlPlane, error) {
	if len(opts.Command) == 0 {
		return nil, errors.New("spawn control plane: no command")
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 2 * time.Minute
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, err
	}
	p := &cpProcess{opts: opts, logPath: filepath.Join(opts.DataDir, "controlplane.log")}
	var err error
	if p.listen, err = freePort(); err != nil {
		return nil, err
	}
	if p.http, err = freePort(); err != nil {
		return nil, err
	}
	if opts.Pprof {
		if p.pprof, err = freePort(); err != nil {
			return nil, err
		}
	}
	if err := p.start(ctx); err != nil {
		if opts.Perf == "" || ctx.Err() != nil {
			return nil, err
		}
		// perf may not be allowed here: count without it.
		p.opts.Perf = ""
		if err2 := p.start(ctx); err2 != nil {
			return nil, errors.Join(err, err2)
		}
	}
	cp := &ControlPlane{
		Addr:       p.listen,
		MetricsURL: "http://" + p.http + "/metrics",
		AdminConf:  filepath.Join(opts.DataDir, "admin.conf"),
		proc:       p,
	}
	if opts.Pprof {
		cp.PprofURL = "http://" + p.pprof
	}
	return cp, nil
}

// start runs the process (again, on the same ports and data dir) and
// waits for /healthz.
func (p *cpProcess) start(ctx context.Context) error {
	args := append([]string{}, p.opts.Command[1:]...)
	args = append(args, "--data-dir", p.opts.DataDir, "--listen", p.listen, "--http-listen", p.http)
	if p.pprof != "" {
		args = append(args, "--pprof-listen", p.pprof)
	}
	// The simulated failures are spread over the whole fleet (failure rate
	// x results/s: 3.3 incidents/s at 10,000 agents with the defaults),
	// which a production fleet budget (--fleet-max-concurrent 100,
	// --fleet-max-per-hour 1000) would hold back by design: the bench
	// measures the remediation path, not the budget. Opts.Args come after
	// and win.
	args = append(args, "--fleet-max-concurrent", "0", "--fleet-max-per-hour", "0")
	args = append(args, p.opts.Args...)
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	argv := append([]string{p.opts.Command[0]}, args...)
	perfOut := ""
	p.starts++
	if p.opts.Perf != "" {
		perfOut = filepath.Join(p.opts.DataDir, fmt.Sprintf("perf-%d.csv", p.starts))
		argv = append([]string{p.opts.Perf, "stat", "-I", "200", "-x", ",", "-o", perfOut,
			"-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), p.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C in the terminal reaches the bench,
	// which stops the control plane itself, by pid.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.opts.Command[0], err)
	}
	done := make(chan struct{})
	cpPid := cmd.Process.Pid
	if perfOut != "" {
		// perf forks the control plane: its pid is perf's child's.
		cpPid = 0
		for deadline := time.Now().Add(10 * time.Second); cpPid == 0 && time.Now().Before(deadline); {
			if kids := childPIDs(cmd.Process.Pid); len(kids) > 0 {
				cpPid = kids[0]
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if cpPid == 0 {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			logf.Close()
			return fmt.Errorf("perf did not start the control plane; see %s", p.logPath)
		}
	}
	p.mu.Lock()
	p.cmd, p.done, p.cpPid, p.perfOut = cmd, done, cpPid, perfOut
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.startErr = err
		p.mu.Unlock()
		close(done)
	}()
	return p.waitReady(ctx, done)
}

func (p *cpProcess) waitReady(ctx context.Context, done chan struct{}) error {
	deadline := time.Now().Add(p.opts.ReadyTimeout)
	url := "http://" + p.http + "/healthz"
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-done:
			p.mu.Lock()
			err := p.startErr
			p.mu.Unlock()
			return fmt.Errorf("control plane exited during start (%v); see %s", err, p.logPath)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("control plane not ready within %s; see %s", p.opts.ReadyTimeout, p.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the control plane by pid and waits for it (and perf, which
// ends with it); SIGKILL after timeout.
func (p *cpProcess) stop(sig syscall.Signal, timeout time.Duration) {
	p.mu.Lock()
	cmd, done, pid := p.cmd, p.done, p.cpPid
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = syscall.Kill(pid, sig)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	t.Reset(10 * time.Second)
	select {
	case <-done:
	case <-t.C:
		_ = cmd.Process.Kill() // perf, if it outlived its workload
		<-done
	}
}

// Fsyncs is the number of fsync and fdatasync calls the current control
// plane process made so far, counted by perf; ok is false without perf.
func (c *ControlPlane) Fsyncs() (n uint64, ok bool) {
	if c.proc == nil {
		return 0, false
	}
	c.proc.mu.Lock()
	path := c.proc.perfOut
	c.proc.mu.Unlock()
	if path == "" {
		return 0, false
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	// Lines: "<time>,<count>,<unit>,<event>,..." every 200 ms.
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(strings.TrimSpace(line), ",")
		if len(f) < 4 || !strings.HasPrefix(f[3], "syscalls:") {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err == nil {
			n += v
		}
	}
	return n, true
}

// Stop stops a control plane the bench started (SIGTERM, then SIGKILL
// after 30 s). It does nothing for an existing one.
func (c *ControlPlane) Stop() {
	if c.proc != nil {
		c.proc.stop(syscall.SIGTERM, 30*time.Second)
	}
}

// Restart stops the control plane with sig (SIGTERM: graceful; SIGKILL: a
// crash) and starts it again on the same data dir and ports. It returns
// when the process has exited (down) and when the new one answers /healthz
// (up).
func (c *ControlPlane) Restart(ctx context.Context, sig syscall.Signal) (down, up time.Time, err error) {
	if c.proc == nil {
		return time.Time{}, time.Time{}, errors.New("restart: the bench did not start this control plane")
	}
	c.proc.stop(sig, 30*time.Second)
	down = time.Now()
	if err := c.proc.start(ctx); err != nil {
		return down, time.Time{}, err
	}
	return down, time.Now(), nil
}

// LoadAdmin reads the control plane's admin.conf.
func (c *ControlPlane) LoadAdmin() (*adminconf.Config, error) {
	conf, err := adminconf.Load(c.AdminConf)
	if err != nil {
		return nil, err
	}
	return conf, nil
}
