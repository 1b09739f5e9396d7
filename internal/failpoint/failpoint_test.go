package failpoint

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	got, err := Parse(" agentAfterSeqPersist=exit ; cpAfterBatchCommit=20*off->exit(300ms);;" +
		"agentMidExecution=50%2*sleep(100)->panic(boom);cpBeforeTaskSend=print")
	require.NoError(t, err)
	require.Equal(t, map[string][]Term{
		AgentAfterSeqPersist: {{Percent: 100, Action: ActionExit}},
		CPAfterBatchCommit:   {{Percent: 100, Count: 20, Action: ActionOff}, {Percent: 100, Action: ActionExit, Delay: 300 * time.Millisecond}},
		AgentMidExecution:    {{Percent: 50, Count: 2, Action: ActionSleep, Delay: 100 * time.Millisecond}, {Percent: 100, Action: ActionPanic, Message: "boom"}},
		CPBeforeTaskSend:     {{Percent: 100, Action: ActionPrint}},
	}, got)
	require.Equal(t, "20*off", got[CPAfterBatchCommit][0].String())
	require.Equal(t, "exit(300ms)", got[CPAfterBatchCommit][1].String())
	require.Equal(t, "50%2*sleep(100ms)", got[AgentMidExecution][0].String())

	empty, err := Parse("")
	require.NoError(t, err)
	require.Empty(t, empty)
}

func TestParseErrors(t *testing.T) {
	for spec, want := range map[string]string{
		"nosuchpoint=exit":                                     "unknown failpoint",
		"agentAfterSeqPersist":                                 "not name=terms",
		"agentAfterSeqPersist=explode":                         "unknown action",
		"agentAfterSeqPersist=sleep":                           "needs a duration",
		"agentAfterSeqPersist=sleep(soon)":                     "bad duration",
		"agentAfterSeqPersist=0*exit":                          "count",
		"agentAfterSeqPersist=150%exit":                        "percentage",
		"agentAfterSeqPersist=exit(1s":                         "missing )",
		"agentAfterSeqPersist=off(1)":                          "no argument",
		"agentAfterSeqPersist=2*off->":                         "no action",
		"agentAfterSeqPersist=exit;agentAfterSeqPersist=panic": "set twice",
	} {
		_, err := Parse(spec)
		require.Error(t, err, spec)
		require.Contains(t, err.Error(), want, spec)
		require.True(t, strings.HasPrefix(err.Error(), EnvVar), spec)
	}
}

func TestNamesAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range Names {
		require.False(t, seen[n], n)
		seen[n] = true
	}
}

// Without the build tag the markers must do nothing, whatever the
// environment says.
func TestDisabledBuildIgnoresEnvironment(t *testing.T) {
	if Enabled {
		t.Skip("built with the failpoints tag")
	}
	t.Setenv(EnvVar, AgentAfterSeqPersist+"=panic")
	Inject(AgentAfterSeqPersist)
	InjectAsync(AgentAfterSeqPersist)
}
