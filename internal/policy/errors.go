package policy

import (
	"fmt"
	"sort"
	"strings"
)

// FieldError is one problem in a policy file, located by line and field
// path.
type FieldError struct {
	File  string
	Line  int    // 1-based; 0 when unknown
	Field string // e.g. "spec.check.type"; "" for file-level (syntax) errors
	Msg   string
}

// Error formats as "file:line: field: message".
func (e FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ValidationError holds every problem found in one file. Parse returns it
// (as error) whenever a file has at least one problem.
type ValidationError struct {
	File   string
	Errors []FieldError
}

// maxShownErrors caps how many problems Error lists (Errors keeps them all).
const maxShownErrors = 50

// Error lists the problems, one per line (at most maxShownErrors of them).
func (e *ValidationError) Error() string {
	n := min(len(e.Errors), maxShownErrors)
	lines := make([]string, 0, n+1)
	for _, fe := range e.Errors[:n] {
		lines = append(lines, fe.Error())
	}
	if more := len(e.Errors) - n; more > 0 {
		lines = append(lines, fmt.Sprintf("%s: ... and %d more problems", e.File, more))
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the individual errors, so errors.As can find a FieldError.
func (e *ValidationError) Unwrap() []error {
	out := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		out[i] = fe
	}
	return out
}

func (e *ValidationError) add(line int, field, format string, args ...any) {
	e.Errors = append(e.Errors, FieldError{File: e.File, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// sort orders the errors by line, keeping the order of errors on one line.
func (e *ValidationError) sort() {
	sort.SliceStable(e.Errors, func(i, j int) bool { return e.Errors[i].Line < e.Errors[j].Line })
}
