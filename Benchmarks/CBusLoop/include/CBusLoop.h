int cbusloop_placeholder(void);
