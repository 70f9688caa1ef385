#!/usr/bin/perl
# Verify every DKIM signature of the message on stdin with Mail::DKIM, looking keys up
# at the DNS server HOST PORT. One line per signature: "result domain selector algorithm".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my ($host, $port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$host], port => $port, recurse => 1,
    udp_timeout => 5, tcp_timeout => 5, retry => 1,
));
my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z//;
    $verifier->PRINT("$line\015\012");
}
$verifier->CLOSE;
for my $sig ($verifier->signatures) {
    printf "%s %s %s %s (%s)\n", $sig->result, $sig->domain, $sig->selector, $sig->algorithm, $sig->result_detail;
}
