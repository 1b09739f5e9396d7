package bolt

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// TestCrashAfterAnyCommitReplays: after every commit the file is copied as
// it is on disk (a crash there: no Close, no final checkpoint) and opened:
// every check's state and history must be what the live store says, with
// checkpoints due at random and the log trimmed hard.
func TestCrashAfterAnyCommitReplays(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tend.db")
	s, err := Open(path, Options{HistoryPerCheck: 4, CheckpointInterval: 3 * time.Second})
	require.NoError(t, err)
	defer func() { s.Close() }()
	s.res.logSlack = 0
	now := t0
	s.now = func() time.Time { return now }
	agents := []string{"a1", "a2", "a3"}
	for i, a := range agents {
		enroll(t, s, a, fmt.Sprintf("web-%d", i))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	seq := map[string]uint64{}
	checks := []string{"fast", "mid", "slow", "rare"}
	for round := range 150 {
		now = now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		var bs []store.ResultBatch
		for _, a := range agents {
			var rs []*agentv1.CheckResult
			for ci, c := range checks {
				if rng.IntN(1<<ci) != 0 {
					continue
				}
				seq[a]++
				st := stOK
				if rng.IntN(3) == 0 {
					st = stCrit
				}
				rs = append(rs, result(seq[a], c, st, now))
			}
			if len(rs) > 0 {
				bs = append(bs, store.ResultBatch{AgentID: a, Results: rs})
			}
		}
		if len(bs) == 0 {
			continue
		}
		commit(t, s, bs...)

		cp := filepath.Join(dir, fmt.Sprintf("crash-%d.db", round))
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(cp, b, 0o600))
		c, err := Open(cp, Options{HistoryPerCheck: 4, CheckpointInterval: 3 * time.Second})
		require.NoError(t, err, "round %d", round)
		require.NoError(t, c.Verify(), "round %d", round)
		for _, a := range agents {
			want, err := s.ListCheckStates(a)
			require.NoError(t, err)
			got, err := c.ListCheckStates(a)
			require.NoError(t, err)
			require.Equal(t, len(want), len(got), "round %d agent %s", round, a)
			for i := range want {
				require.Equal(t, want[i].CheckID, got[i].CheckID)
				require.True(t, proto.Equal(want[i].Last, got[i].Last), "round %d %s/%s", round, a, want[i].CheckID)
				require.Equal(t, want[i].Streak, got[i].Streak, "round %d %s/%s", round, a, want[i].CheckID)
				require.True(t, want[i].Since.Equal(got[i].Since), "round %d %s/%s", round, a, want[i].CheckID)
				require.Equal(t, want[i].HistoryLen, got[i].HistoryLen)
				wr, err := s.ListResults(a, want[i].CheckID, 0)
				require.NoError(t, err)
				gr, err := c.ListResults(a, want[i].CheckID, 0)
				require.NoError(t, err, "round %d %s/%s", round, a, want[i].CheckID)
				require.Equal(t, seqs(wr), seqs(gr), "round %d %s/%s", round, a, want[i].CheckID)
			}
		}
		if round%10 != 9 {
			require.NoError(t, c.Close())
			require.NoError(t, os.Remove(cp))
			continue
		}
		// Go on with the recovered store (its replayed states dirty), and
		// crash it in turn later.
		old := s
		s, path = c, cp
		s.res.logSlack = 0
		s.now = func() time.Time { return now }
		old.db.Close() // crash: no final checkpoint
	}
}
