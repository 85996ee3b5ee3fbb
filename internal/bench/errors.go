package bench

import (
	"errors"
	"strings"
	"sync"

	"google.golang.org/grpc/status"
)

// maxErrorSamples is how many distinct error messages a report keeps.
const maxErrorSamples = 5

// ErrorSample is one distinct error message seen during the measured window
// and how often it occurred.
type ErrorSample struct {
	// Message is "<gRPC code>: <message>", prefixed with "baseline: " for a
	// failed Health/Check.
	Message string `json:"message"`
	// Count is the number of failed operations with this message.
	Count int64 `json:"count"`
}

// errorLog keeps the first maxErrorSamples distinct messages. Errors are the
// exception, so one mutex across workers is enough.
type errorLog struct {
	mu      sync.Mutex
	samples []ErrorSample
}

func (l *errorLog) add(baseline bool, err error) {
	msg := describe(err)
	if baseline {
		msg = "baseline: " + msg
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.samples {
		if l.samples[i].Message == msg {
			l.samples[i].Count++
			return
		}
	}
	if len(l.samples) < maxErrorSamples {
		l.samples = append(l.samples, ErrorSample{Message: msg, Count: 1})
	}
}

func (l *errorLog) list() []ErrorSample {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ErrorSample{}, l.samples...)
}

// describe formats an error for a person: a gRPC status error, wrapped or
// not, reads "Code: message" in place of grpc-go's "rpc error: code = ...
// desc = ..." text.
func describe(err error) string {
	var se interface {
		error
		GRPCStatus() *status.Status
	}
	if !errors.As(err, &se) {
		return err.Error()
	}
	st := se.GRPCStatus()
	return strings.Replace(err.Error(), se.Error(), st.Code().String()+": "+st.Message(), 1)
}
