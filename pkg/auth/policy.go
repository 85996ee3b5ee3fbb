package auth

import (
	"fmt"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// PolicyFor builds the policy of every method of svc from its contract:
// methods marked NO_SIDE_EFFECTS may be called by read roles, all others by
// write roles. overrides, keyed by short method name (CheckOrder), replace
// the roles of single methods; naming a method svc lacks panics, so a
// renamed RPC cannot silently lose its override.
func PolicyFor(svc protoreflect.ServiceDescriptor, read, write []Role, overrides map[string][]Role) Policy {
	p := Policy{}
	methods := svc.Methods()
	for i := range methods.Len() {
		m := methods.Get(i)
		full := fmt.Sprintf("/%s/%s", svc.FullName(), m.Name())
		roles := write
		if opts, ok := m.Options().(*descriptorpb.MethodOptions); ok &&
			opts.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
			roles = read
		}
		p[full] = roles
	}
	for name, roles := range overrides {
		if methods.ByName(protoreflect.Name(name)) == nil {
			panic(fmt.Sprintf("auth: override for unknown method %s.%s", svc.FullName(), name))
		}
		p[fmt.Sprintf("/%s/%s", svc.FullName(), name)] = roles
	}
	return p
}
