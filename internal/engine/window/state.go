package window

import (
	"math/bits"
	"time"
)

// FlapHistory is how many results flap detection looks at (as Nagios and
// Sensu do): 21 results, 20 possible changes.
const FlapHistory = 21

// State is what the engine remembers of one (agent, policy). It is plain
// data with exported fields and JSON tags, so the control plane can persist
// it and rebuild it; a few dozen bytes. The zero State is a fresh one.
//
// Bit sets hold results newest first (bit 0 of Bits[0] and of History is
// the newest result); a 1 is a result that counted as failed.
type State struct {
	// Bits holds the last results of the window (up to 128).
	Bits [2]uint64 `json:"bits"`
	// N is how many results Bits holds (at most 128); the window is the
	// last min(N, window) of them, so a policy whose window grows keeps the
	// history it has.
	N int `json:"n,omitempty"`
	// History holds the last FlapHistory results for flap detection, and
	// HistoryLen how many it holds. Unlike the window it survives a reset:
	// flapping is about the check, across incidents.
	History    uint32 `json:"history,omitempty"`
	HistoryLen int    `json:"historyLen,omitempty"`
	// Triggered is set by the result that completes the trigger and
	// cleared only by ResetAfterVerifiedRecovery.
	Triggered bool `json:"triggered,omitempty"`
	// Flapping is the flap detector's output.
	Flapping bool `json:"flapping,omitempty"`
	// Phase is the current phase ("" in a zero State means healthy), and
	// Since the time of the result that entered it.
	Phase Phase     `json:"phase,omitempty"`
	Since time.Time `json:"since,omitzero"`
	// LastSeq is the seq of the last result observed; a result whose seq is
	// not above it is ignored. LastAt is the time it was observed at.
	LastSeq uint64    `json:"lastSeq,omitempty"`
	LastAt  time.Time `json:"lastAt,omitzero"`
}

// CurrentPhase returns the phase, healthy for a zero State.
func (s *State) CurrentPhase() Phase {
	if s.Phase == "" {
		return PhaseHealthy
	}
	return s.Phase
}

// ResetAfterVerifiedRecovery clears the window and the trigger: the
// control plane calls it when the verifier has seen the check pass after a
// remediation (or, for an escalated incident, when it closes the incident
// on a passing result). Until then a triggered state stays triggered. The
// flap history and the last seq are kept.
func (s *State) ResetAfterVerifiedRecovery() {
	s.Bits = [2]uint64{}
	s.N = 0
	s.Triggered = false
	p := PhaseHealthy
	if s.Flapping {
		p = PhaseFlapping
	}
	if p != s.CurrentPhase() {
		s.Phase, s.Since = p, s.LastAt
	}
}

// push shifts one result into the window.
func (s *State) push(failed bool) {
	var b uint64
	if failed {
		b = 1
	}
	s.Bits[1] = s.Bits[1]<<1 | s.Bits[0]>>63
	s.Bits[0] = s.Bits[0]<<1 | b
	s.N = min(s.N+1, maxWindow)
}

// results is how many results the window of size w holds.
func (s *State) results(w int) int { return min(s.N, w) }

// failures counts the failed results among the last w.
func (s *State) failures(w int) int {
	lo, hi := s.Bits[0], s.Bits[1]
	switch {
	case w < 64:
		lo &= 1<<w - 1
		hi = 0
	case w < 128:
		hi &= 1<<(w-64) - 1
	}
	return bits.OnesCount64(lo) + bits.OnesCount64(hi)
}

// pushHistory shifts one result into the flap history.
func (s *State) pushHistory(failed bool) {
	var b uint32
	if failed {
		b = 1
	}
	s.History = (s.History<<1 | b) & (1<<FlapHistory - 1)
	s.HistoryLen = min(s.HistoryLen+1, FlapHistory)
}

// flapWeights[i] is the weight of the change between the results i and
// i+1 (0 = newest): 1.25 for the newest change down to 0.75 for the oldest.
var flapWeights = func() (w [FlapHistory - 1]float64) {
	for i := range w {
		w[i] = 1.25 - 0.5*float64(i)/float64(FlapHistory-2)
	}
	return w
}()

// FlapPercent is the weighted percent state change of the history, from 0
// (no change) to 100 (a change on every result). With fewer than
// FlapHistory results the missing ones count as unchanged, so a new check
// does not start out flapping.
func (s *State) FlapPercent() float64 {
	n := min(s.HistoryLen, FlapHistory)
	if n < 2 {
		return 0
	}
	changes := (s.History ^ s.History>>1) & (1<<(n-1) - 1)
	var sum float64
	for changes != 0 {
		i := bits.TrailingZeros32(changes)
		sum += flapWeights[i]
		changes &= changes - 1
	}
	return sum * 100 / (FlapHistory - 1)
}
