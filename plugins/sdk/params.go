package sdk

import "tend.dev/tend/internal/actions"

// Params reads an action's parameters with their types, collecting every
// problem instead of stopping at the first, and knows which parameters were
// asked for, so that Err also reports the ones nobody asked for (a typo in
// a policy is an error, not a silently ignored field). Problems read like
//
//	param match.pidfile: want a string, got number
//
// Use one Params per validation: read every parameter, then call Err.
//
//	p := sdk.NewParams(params)
//	path := p.Path("path")
//	pattern := p.OptString("pattern", "*")
//	if err := p.Err(); err != nil {
//		return err // wraps ErrInvalidParams
//	}
//
// It is the reader the control plane and the agent use for the built-in
// actions' schemas too (internal/actions), so a plugin and Tend agree on
// what a parameter means.
type Params = actions.Params

// Problem is one problem with one parameter (see Problems).
type Problem = actions.Problem

// NewParams reads m, an action's parameters (nil is no parameters).
func NewParams(m map[string]any) *Params { return actions.NewParams(m) }

// Problems returns the problems listed by an error from Params.Err or
// InvalidParamsf, and nil for any other error.
func Problems(err error) []Problem { return actions.Problems(err) }
