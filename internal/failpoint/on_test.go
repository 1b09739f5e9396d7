//go:build failpoints

package failpoint

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCountsAndChain(t *testing.T) {
	require.NoError(t, setup(CPAfterBatchCommit+"=2*off->1*panic(third)->off"))
	t.Cleanup(func() { _ = setup("") })
	Inject(CPAfterBatchCommit)
	Inject(CPAfterBatchCommit)
	require.PanicsWithValue(t, "failpoint cpAfterBatchCommit: third", func() { Inject(CPAfterBatchCommit) })
	for range 5 {
		Inject(CPAfterBatchCommit) // off from now on
	}
	Inject(AgentAfterSeqPersist) // not set: nothing
}

func TestSleep(t *testing.T) {
	require.NoError(t, setup(CPBeforeTaskSend+"=1*sleep(50ms)"))
	t.Cleanup(func() { _ = setup("") })
	start := time.Now()
	Inject(CPBeforeTaskSend)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	start = time.Now()
	Inject(CPBeforeTaskSend) // used up
	require.Less(t, time.Since(start), 50*time.Millisecond)
}

// exit kills the process with SIGKILL: no deferred function runs. The test
// binary runs itself with the failpoint set.
func TestExitIsSIGKILL(t *testing.T) {
	if os.Getenv("FAILPOINT_CHILD") == "1" {
		defer os.WriteFile(os.Getenv("FAILPOINT_MARK"), []byte("deferred ran"), 0o644)
		InjectAsync(AgentMidExecution)
		time.Sleep(10 * time.Second)
		return
	}
	mark := t.TempDir() + "/mark"
	cmd := exec.Command(os.Args[0], "-test.run", "^TestExitIsSIGKILL$")
	cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1", "FAILPOINT_MARK="+mark, EnvVar+"="+AgentMidExecution+"=exit(100ms)")
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled(), "%v\n%s", err, out)
	require.Equal(t, syscall.SIGKILL, ws.Signal())
	require.True(t, strings.Contains(string(out), LogPrefix+AgentMidExecution+": exit (SIGKILL)"), "%s", out)
	_, statErr := os.Stat(mark)
	require.True(t, os.IsNotExist(statErr), "deferred functions must not run")
}

func TestBadSpecStopsTheProcess(t *testing.T) {
	if os.Getenv("FAILPOINT_CHILD") == "2" {
		return // init already exited
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBadSpecStopsTheProcess$")
	cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=2", EnvVar+"=noSuchPoint=exit")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, 2, ee.ExitCode())
	require.Contains(t, string(out), "unknown failpoint")
}
