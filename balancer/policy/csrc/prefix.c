/* Placeholder until the native prefix index lands. */
#include "native.h"
PyTypeObject lt_PrefixIndexType = {PyVarObject_HEAD_INIT(NULL, 0) "balancer.policy._native.PrefixIndex"};
