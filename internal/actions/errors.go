package actions

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

var (
	// ErrInvalidParams marks an error about an action's parameters
	// (codes.InvalidArgument between the agent and a plugin).
	ErrInvalidParams = errors.New("invalid params")
	// ErrUnknownAction marks an action a plugin does not serve
	// (codes.NotFound between the agent and a plugin).
	ErrUnknownAction = errors.New("unknown action")
)

// paramsError lists every problem with an action's parameters.
type paramsError struct{ problems []Problem }

func (e *paramsError) Error() string {
	s := make([]string, len(e.problems))
	for i, p := range e.problems {
		s[i] = p.String()
	}
	return "invalid params: " + strings.Join(s, "; ")
}

func (e *paramsError) Is(target error) bool { return target == ErrInvalidParams }

// Problems returns the problems listed by an error from Params.Err (or
// InvalidParamsf), nil for any other error.
func Problems(err error) []Problem {
	var pe *paramsError
	if errors.As(err, &pe) {
		return append([]Problem(nil), pe.problems...)
	}
	return nil
}

// InvalidParamsf returns an error wrapping ErrInvalidParams whose message
// is "invalid params: " and the formatted text.
func InvalidParamsf(format string, args ...any) error {
	return &paramsError{problems: []Problem{{Text: fmt.Sprintf(format, args...)}}}
}

// UnknownAction returns an error wrapping ErrUnknownAction that names the
// actions the plugin does serve.
func UnknownAction(action string, known ...string) error {
	return fmt.Errorf("%w %s (this plugin serves: %s)", ErrUnknownAction, Quote(action, 100), strings.Join(known, ", "))
}

// Quote returns s, from the host and so hostile (a process name, a file
// name), as a Go-quoted string safe to put in output and logs: control
// characters and invalid UTF-8 are escaped, and s is cut to max bytes
// first (max <= 0: no cut).
func Quote(s string, max int) string {
	cut := ""
	if max > 0 && len(s) > max {
		s, cut = s[:max], "…"
	}
	return strconv.Quote(s) + cut
}
