#include "CBusLoop.h"
int cbusloop_placeholder(void) { return 0; }
