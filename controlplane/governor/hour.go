package governor

import (
	"slices"
	"time"
)

// Hour is the length of the sliding window of HourWindow.
const Hour = time.Hour

// HourWindow holds the start times of tasks in the sliding last hour, for
// maxPerHour: the control plane keeps one per policy (and one for the
// fleet) in memory and rebuilds it from the stored tasks on start. The
// zero value is ready to use; it is not safe for concurrent use.
//
// A start counts at now while now-1h < start, so it leaves the window
// exactly one hour after it began. Starts are kept sorted and pruned on
// Add, so it holds at most the starts of the last hour.
type HourWindow struct {
	starts []time.Time // sorted, oldest first
}

// Add records a task start. Starts may come out of order (a rebuild).
func (h *HourWindow) Add(t time.Time) {
	i, _ := slices.BinarySearchFunc(h.starts, t, time.Time.Compare)
	// After equal times, so the order of equal starts is stable.
	for i < len(h.starts) && h.starts[i].Equal(t) {
		i++
	}
	h.starts = slices.Insert(h.starts, i, t)
	// Drop what can no longer count: older than an hour before the newest.
	newest := h.starts[len(h.starts)-1]
	if n := h.firstIn(newest); n > 0 {
		h.starts = slices.Delete(h.starts, 0, n)
	}
}

// Count returns how many starts fall in the hour before now (starts after
// now, from a clock step back, count too).
func (h *HourWindow) Count(now time.Time) int {
	return len(h.starts) - h.firstIn(now)
}

// FreeAt returns when Count drops below limit: now if it already is (or
// limit is 0, no limit), else the time the oldest start that must go
// leaves the hour. It is Input.PerHourFreeAt.
func (h *HourWindow) FreeAt(now time.Time, limit int) time.Time {
	if limit <= 0 {
		return now
	}
	first := h.firstIn(now)
	in := len(h.starts) - first
	if in < limit {
		return now
	}
	// Of the in starts, the oldest in-limit+1 must leave.
	return h.starts[first+in-limit].Add(Hour)
}

// firstIn returns the index of the first start within the hour before now.
func (h *HourWindow) firstIn(now time.Time) int {
	cutoff := now.Add(-Hour)
	i, _ := slices.BinarySearchFunc(h.starts, cutoff, time.Time.Compare)
	for i < len(h.starts) && !h.starts[i].After(cutoff) {
		i++
	}
	return i
}
