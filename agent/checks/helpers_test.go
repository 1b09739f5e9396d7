package checks

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Spec builders for the tests.

func processSpec(name, pidfile string) *agentv1.CheckSpec {
	return &agentv1.CheckSpec{Id: "t/process", Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: name, Pidfile: pidfile}}}
}

func diskSpec(path string, max float64) *agentv1.CheckSpec {
	return &agentv1.CheckSpec{Id: "t/disk", Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: path, MaxUsedPercent: max}}}
}

func tcpSpec(addr string) *agentv1.CheckSpec {
	return &agentv1.CheckSpec{Id: "t/tcp", Check: &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: addr}}}
}

func httpSpec(url string, expect int32) *agentv1.CheckSpec {
	return &agentv1.CheckSpec{Id: "t/http", Check: &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: url, ExpectStatus: expect}}}
}

func commandSpec(argv ...string) *agentv1.CheckSpec {
	return &agentv1.CheckSpec{Id: "t/command", Timeout: durationpb.New(time.Second), Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: argv}}}
}

func serviceSpec(name string) *agentv1.CheckSpec {
	return &agentv1.CheckSpec{Id: "t/service", Check: &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: name}}}
}

// mustNew builds a checker through the registry.
func mustNew(t *testing.T, spec *agentv1.CheckSpec) Checker {
	t.Helper()
	c, err := New(spec)
	require.NoError(t, err)
	return c
}

// run runs a check with a timeout.
func run(t *testing.T, c Checker, timeout time.Duration) Result {
	t.Helper()
	ctx, cancel := WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Check(ctx)
}

// lookPath finds a program the tests run, failing the test if it is missing.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err, "the tests need %s", name)
	return p
}

// processGone says whether pid has exited: no such process, or a zombie
// (in a container, PID 1 may never reap orphans).
func processGone(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	if err != nil {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	st, err := parseProcStat(b)
	return err == nil && st.dead()
}

// syscallKill SIGKILLs a pid the test started (directly or not).
func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
