package inference_test

import (
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func wantCode(t *testing.T, what string, want codes.Code, call func() error) {
	t.Helper()
	if got := status.Code(call()); got != want {
		t.Errorf("%s: code = %v, want %v", what, got, want)
	}
}

// wantField checks that the call fails with InvalidArgument and a
// BadRequest violation naming field.
func wantField(t *testing.T, what, field string, call func() error) {
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

func timestamp(sec int64) *timestamppb.Timestamp { return timestamppb.New(time.Unix(sec, 0)) }
