package bolt

import (
	"testing"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
)

// A batch whose predecessor on the stream was not stored is refused, so the
// high-water mark never jumps over results that were never written.
func TestCommitRefusesBatchAfterAGap(t *testing.T) {
	s := testStore(t, Options{})
	enroll(t, s, "a1", "web-1")
	// Batch A (1..5) failed to commit; batch B (6..10) arrives with After=5.
	outs, err := s.CommitResults([]store.ResultBatch{{AgentID: "a1", Results: results("c", 6, 10), After: 5}})
	require.NoError(t, err)
	require.ErrorIs(t, outs[0].Err, store.ErrGap)
	require.Zero(t, outs[0].Stored)
	c, err := s.Counters("a1")
	require.NoError(t, err)
	require.Zero(t, c.HighWater)

	// The agent resends from its first unacknowledged result: all stored.
	outs, err = s.CommitResults([]store.ResultBatch{
		{AgentID: "a1", Results: results("c", 1, 5), After: 0},
		{AgentID: "a1", Results: results("c", 6, 10), After: 5},
	})
	require.NoError(t, err)
	require.NoError(t, outs[0].Err)
	require.NoError(t, outs[1].Err)
	require.Equal(t, 5, outs[0].Stored)
	require.Equal(t, 5, outs[1].Stored)
	require.Equal(t, uint64(10), outs[1].AckedThrough)
}
