// Package e2e tests Tend by starting the real binaries: tend-controlplane,
// tend-agent and tendctl, built once by TestMain.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/internal/adminconf"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tend-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Built as `make build` builds them (static, without gRPC's trace pages).
	cmd := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", dir+"/", "./cmd/tend-controlplane", "./cmd/tend-agent", "./cmd/tendctl", "./cmd/tend-demo-service",
		"./plugins/process/cmd/tend-plugin-process", "./plugins/service/cmd/tend-plugin-service",
		"./plugins/disk/cmd/tend-plugin-disk", "./plugins/exec/cmd/tend-plugin-exec")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// proc is a started binary; it is stopped by pid at test cleanup.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	log  string
	mu   sync.Mutex
	done chan struct{}
	err  error
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return launch(t, name, exec.Command(bin(strings.Fields(name)[0]), args...))
}

// launch starts cmd (its output goes to a log file in the test's temp dir)
// in its own process group; it is stopped by pid at test cleanup.
func launch(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), strings.ReplaceAll(name, "/", "_")+".log")
	f, err := os.Create(logPath)
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	p := &proc{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM, 10*time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("---- log of %s (pid %d) ----\n%s", name, cmd.Process.Pid, b)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop signals the process by pid and waits; SIGKILL after the timeout.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) kill() { p.stop(syscall.SIGKILL, 5*time.Second) }

func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// wait waits for the process to exit and returns its error.
func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// controlPlane is a running tend-controlplane.
type controlPlane struct {
	*proc
	dataDir string
	addr    string
	http    string
	args    []string
}

func (c *controlPlane) adminConf() string { return filepath.Join(c.dataDir, "admin.conf") }

func startControlPlane(t *testing.T, dataDir, addr string, extra ...string) *controlPlane {
	t.Helper()
	if addr == "" {
		addr = freeAddr(t)
	}
	httpAddr := freeAddr(t)
	args := append([]string{"--data-dir", dataDir, "--listen", addr, "--http-listen", httpAddr}, extra...)
	c := &controlPlane{dataDir: dataDir, addr: addr, http: httpAddr, args: extra}
	c.proc = start(t, "tend-controlplane", args...)
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			require.False(t, c.exited(), "control plane exited:\n%s", c.output())
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 20*time.Second, 50*time.Millisecond)
	return c
}

// restart stops the control plane (SIGTERM) and starts it again on the same
// address and data dir after the pause.
func (c *controlPlane) restart(t *testing.T, pause time.Duration) {
	c.stop(syscall.SIGTERM, 10*time.Second)
	time.Sleep(pause)
	n := startControlPlane(t, c.dataDir, c.addr, c.args...)
	c.proc, c.http = n.proc, n.http
}

// tendctl runs tendctl against the control plane.
func (c *controlPlane) tendctl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(bin("tendctl"), append([]string{"--config", c.adminConf()}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (c *controlPlane) mustTendctl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := c.tendctl(t, args...)
	require.NoError(t, err, "tendctl %v: %s", args, errOut)
	return out
}

func (c *controlPlane) token(t *testing.T, args ...string) string {
	t.Helper()
	return strings.TrimSpace(c.mustTendctl(t, append([]string{"token", "create"}, args...)...))
}

// admin returns an admin API client from admin.conf.
func (c *controlPlane) admin(t *testing.T) adminv1.AdminServiceClient {
	t.Helper()
	conf, err := adminconf.Load(c.adminConf())
	require.NoError(t, err)
	conn, err := conf.Dial()
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return adminv1.NewAdminServiceClient(conn)
}

type agentJSON struct {
	Name     string            `json:"name"`
	ID       string            `json:"id"`
	Labels   map[string]string `json:"labels"`
	Status   string            `json:"status"`
	LastSeen string            `json:"lastSeen"`
	Version  string            `json:"version"`
}

func (c *controlPlane) agents(t *testing.T) map[string]agentJSON {
	t.Helper()
	out, errOut, err := c.tendctl(t, "get", "agents", "-o", "json")
	if err != nil {
		t.Logf("tendctl get agents: %v: %s", err, errOut)
		return nil
	}
	var list []agentJSON
	require.NoError(t, json.Unmarshal([]byte(out), &list), out)
	m := map[string]agentJSON{}
	for _, a := range list {
		m[a.Name] = a
	}
	return m
}

func (c *controlPlane) waitAgentStatus(t *testing.T, name, status string, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return c.agents(t)[name].Status == status }, within, 200*time.Millisecond,
		"agent %s never became %s", name, status)
}

type agentProc struct {
	*proc
	dataDir string
}

func startAgent(t *testing.T, c *controlPlane, name, dataDir, token string, extra ...string) *agentProc {
	t.Helper()
	args := []string{"--server", c.addr, "--data-dir", dataDir, "--name", name, "--reconnect-max-backoff", "2s"}
	if token != "" {
		args = append(args, "--token", token)
	}
	args = append(args, extra...)
	return &agentProc{proc: start(t, "tend-agent "+name, args...), dataDir: dataDir}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
