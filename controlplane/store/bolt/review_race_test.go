package bolt

import (
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// TestListResultsDuringTrim: readers of a check's history while commits
// trim the log and move/drop its old entries must never see a history
// entry missing (a reader that saw the check's state before a commit's
// apply but opened its read transaction after that commit).
func TestListResultsDuringTrim(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s, err := Open(path, Options{HistoryPerCheck: 3, CheckpointInterval: time.Nanosecond})
	require.NoError(t, err)
	defer s.Close()
	s.res.logSlack = 0
	enroll(t, s, "a1", "web-1")

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, c := range []string{"slow", "fast"} {
					if _, err := s.ListResults("a1", c, 0); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	var seq uint64
	for i := range 3000 {
		var rs []*agentv1.CheckResult
		for range 4 {
			seq++
			rs = append(rs, result(seq, "fast", stOK, t0.Add(time.Duration(seq)*time.Second)))
		}
		if i%5 == 0 {
			seq++
			rs = append(rs, result(seq, "slow", stCrit, t0.Add(time.Duration(seq)*time.Second)))
		}
		commit(t, s, store.ResultBatch{AgentID: "a1", Results: rs})
		if len(errs) > 0 {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
