// Package apierrtest checks, in tests, the gRPC errors services return:
// their code, and the fields an INVALID_ARGUMENT names.
package apierrtest

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Code checks that call fails with code want.
func Code(t testing.TB, what string, want codes.Code, call func() error) {
	t.Helper()
	if got := status.Code(call()); got != want {
		t.Errorf("%s: code = %v, want %v", what, got, want)
	}
}

// Field checks that call fails with InvalidArgument and a BadRequest
// violation naming field.
func Field(t testing.TB, what, field string, call func() error) {
	t.Helper()
	st := status.Convert(call())
	if st.Code() != codes.InvalidArgument {
		t.Errorf("%s: code = %v (%s), want InvalidArgument", what, st.Code(), st.Message())
		return
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return
				}
			}
			t.Errorf("%s: violations %v do not name %q", what, br.GetFieldViolations(), field)
			return
		}
	}
	t.Errorf("%s: no BadRequest detail in %v", what, st.Details())
}
