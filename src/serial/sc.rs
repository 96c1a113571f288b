//! OSDP Secure Channel cryptography (OSDP v2.2 annex D), control-panel side. Pure: keys and
//! random challenges are parameters.
//!
//! Session keys come from the SCBK and the CP's random challenge; each message carries the first
//! four bytes of a CBC-MAC chained over the conversation (a command's MAC starts from the last
//! reply's, and the other way round); data after the command or reply code is AES-CBC encrypted
//! with the complement of the peer's last MAC as IV.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;

pub type Block = [u8; 16];

fn ecb(key: &Block, block: &Block) -> Block {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut b = GenericArray::clone_from_slice(block);
    cipher.encrypt_block(&mut b);
    b.into()
}

fn xor(a: &mut Block, b: &Block) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

fn not(b: &Block) -> Block {
    let mut out = *b;
    for x in &mut out {
        *x = !*x;
    }
    out
}

/// The keys of one session.
#[derive(Clone)]
pub struct Session {
    s_enc: Block,
    s_mac1: Block,
    s_mac2: Block,
    cp_random: [u8; 8],
    /// The last MAC the CP sent (its full 16 bytes).
    c_mac: Block,
    /// The last MAC the PD sent.
    r_mac: Block,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session { .. }")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScError {
    #[error("the reader's cryptogram does not match: wrong Secure Channel key (scbk)")]
    ClientCryptogram,
    #[error("the reader's initial R-MAC does not match")]
    InitialRmac,
    #[error("message authentication code does not match")]
    Mac,
    #[error("encrypted data is not a whole number of blocks or lacks its end marker")]
    Padding,
}

impl Session {
    /// Derives the session keys from `scbk` and the CP's challenge `cp_random`.
    pub fn new(scbk: &Block, cp_random: [u8; 8]) -> Session {
        let derive = |b1: u8| {
            let mut b = [0u8; 16];
            b[0] = 0x01;
            b[1] = b1;
            b[2..8].copy_from_slice(&cp_random[..6]);
            ecb(scbk, &b)
        };
        Session {
            s_enc: derive(0x82),
            s_mac1: derive(0x01),
            s_mac2: derive(0x02),
            cp_random,
            c_mac: [0; 16],
            r_mac: [0; 16],
        }
    }

    /// Checks the PD's client cryptogram (osdp_CCRYPT) and returns the server cryptogram to
    /// send in osdp_SCRYPT.
    pub fn server_cryptogram(
        &self,
        pd_random: &[u8; 8],
        client_cryptogram: &Block,
    ) -> Result<Block, ScError> {
        let mut expect = [0u8; 16];
        expect[..8].copy_from_slice(&self.cp_random);
        expect[8..].copy_from_slice(pd_random);
        let expect = ecb(&self.s_enc, &expect);
        if !constant_eq(&expect, client_cryptogram) {
            return Err(ScError::ClientCryptogram);
        }
        let mut server = [0u8; 16];
        server[..8].copy_from_slice(pd_random);
        server[8..].copy_from_slice(&self.cp_random);
        Ok(ecb(&self.s_enc, &server))
    }

    /// Checks the PD's initial R-MAC (osdp_RMAC_I) for the server cryptogram sent; it seeds the
    /// MAC chain.
    pub fn accept_rmac_i(
        &mut self,
        server_cryptogram: &Block,
        rmac_i: &Block,
    ) -> Result<(), ScError> {
        let expect = ecb(&self.s_mac2, &ecb(&self.s_mac1, server_cryptogram));
        if !constant_eq(&expect, rmac_i) {
            return Err(ScError::InitialRmac);
        }
        self.r_mac = expect;
        Ok(())
    }

    /// CBC-MAC over `data` (zero-padded after an 0x80 marker unless already whole blocks):
    /// S-MAC1 for all blocks but the last, S-MAC2 for the last.
    fn mac(&self, data: &[u8], iv: &Block) -> Block {
        let mut buf = data.to_vec();
        if !buf.len().is_multiple_of(16) || buf.is_empty() {
            buf.push(0x80);
            while !buf.len().is_multiple_of(16) {
                buf.push(0);
            }
        }
        let mut chain = *iv;
        let blocks: Vec<&[u8]> = buf.chunks(16).collect();
        for (i, chunk) in blocks.iter().enumerate() {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            xor(&mut b, &chain);
            let key = if i + 1 == blocks.len() {
                &self.s_mac2
            } else {
                &self.s_mac1
            };
            chain = ecb(key, &b);
        }
        chain
    }

    /// The MAC for a command whose bytes (from SOM up to the MAC) are `data`; returns the four
    /// bytes to append.
    pub fn sign_command(&mut self, data: &[u8]) -> [u8; 4] {
        self.c_mac = self.mac(data, &self.r_mac);
        let mut m = [0u8; 4];
        m.copy_from_slice(&self.c_mac[..4]);
        m
    }

    /// Checks a reply's MAC over `data` (SOM up to the MAC).
    pub fn verify_reply(&mut self, data: &[u8], mac: &[u8]) -> Result<(), ScError> {
        let full = self.mac(data, &self.c_mac);
        if mac.len() != 4 || !constant_eq(&full[..4], mac) {
            return Err(ScError::Mac);
        }
        self.r_mac = full;
        Ok(())
    }

    /// Encrypts command data with IV = !R-MAC.
    pub fn encrypt_command(&self, data: &[u8]) -> Vec<u8> {
        encrypt(&self.s_enc, &not(&self.r_mac), data)
    }

    /// Decrypts reply data (IV = !C-MAC) and strips the padding.
    pub fn decrypt_reply(&self, data: &[u8]) -> Result<Vec<u8>, ScError> {
        if !data.len().is_multiple_of(16) {
            return Err(ScError::Padding);
        }
        let cipher = Aes128::new(GenericArray::from_slice(&self.s_enc));
        let mut chain = not(&self.c_mac);
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks(16) {
            let mut g = GenericArray::clone_from_slice(chunk);
            cipher.decrypt_block(&mut g);
            let mut b: Block = g.into();
            xor(&mut b, &chain);
            chain.copy_from_slice(chunk);
            out.extend_from_slice(&b);
        }
        while out.last() == Some(&0) {
            out.pop();
        }
        if out.pop() != Some(0x80) {
            return Err(ScError::Padding);
        }
        Ok(out)
    }
}

/// 0x80 end marker, zero padding to whole blocks, AES-128-CBC.
fn encrypt(key: &Block, iv: &Block, data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    buf.push(0x80);
    while !buf.len().is_multiple_of(16) {
        buf.push(0);
    }
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut chain = *iv;
    for chunk in buf.chunks_mut(16) {
        let mut b = [0u8; 16];
        b.copy_from_slice(chunk);
        xor(&mut b, &chain);
        let mut g = GenericArray::from(b);
        cipher.encrypt_block(&mut g);
        chain = g.into();
        chunk.copy_from_slice(&chain);
    }
    buf
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Test helpers: the PD's half of the handshake, as the spec defines it, so the CP side can be
/// tested without a reader. The interop test runs against libosdp's PD.
#[cfg(test)]
pub mod pd {
    use super::*;

    pub fn client_cryptogram(s: &Session, pd_random: &[u8; 8]) -> Block {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&s.cp_random);
        b[8..].copy_from_slice(pd_random);
        ecb(&s.s_enc, &b)
    }

    pub fn rmac_i(s: &Session, server_cryptogram: &Block) -> Block {
        ecb(&s.s_mac2, &ecb(&s.s_mac1, server_cryptogram))
    }

    pub fn start(s: &mut Session, rmac_i: Block) {
        s.r_mac = rmac_i;
    }

    /// Checks a command's MAC as a PD does and remembers it.
    pub fn accept_command(s: &mut Session, data: &[u8], mac: &[u8]) -> bool {
        s.c_mac = s.mac(data, &s.r_mac);
        s.c_mac[..4] == *mac
    }

    /// Signs a reply the way a PD does (IV = the command's MAC).
    pub fn sign_reply(s: &mut Session, data: &[u8]) -> [u8; 4] {
        s.r_mac = s.mac(data, &s.c_mac);
        let mut m = [0u8; 4];
        m.copy_from_slice(&s.r_mac[..4]);
        m
    }

    pub fn encrypt_reply(s: &Session, data: &[u8]) -> Vec<u8> {
        encrypt(&s.s_enc, &not(&s.c_mac), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_matches_fips197() {
        let key: Block = hex::decode("000102030405060708090a0b0c0d0e0f")
            .unwrap()
            .try_into()
            .unwrap();
        let pt: Block = hex::decode("00112233445566778899aabbccddeeff")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode(ecb(&key, &pt)),
            "69c4e0d86a7b0430d8cdb78070b4c55a"
        );
    }

    #[test]
    fn handshake_and_mac_chain_round_trip() {
        let scbk = [7u8; 16];
        let mut cp = Session::new(&scbk, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut pd_side = Session::new(&scbk, [1, 2, 3, 4, 5, 6, 7, 8]);
        let pd_random = [9u8; 8];
        let cc = pd::client_cryptogram(&pd_side, &pd_random);
        let server = cp.server_cryptogram(&pd_random, &cc).unwrap();
        let rmac = pd::rmac_i(&pd_side, &server);
        cp.accept_rmac_i(&server, &rmac).unwrap();
        pd_side.r_mac = rmac;
        // A wrong key fails at the first cryptogram.
        let other = Session::new(&[8u8; 16], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            other.server_cryptogram(&pd_random, &cc),
            Err(ScError::ClientCryptogram)
        );
        for round in 0..3u8 {
            let cmd = vec![0x53, 0, 20, 0, 0x0D, 2, 0x17, 0x69, round];
            let m = cp.sign_command(&cmd);
            // The PD computes the same C-MAC.
            pd_side.c_mac = pd_side.mac(&cmd, &pd_side.r_mac);
            assert_eq!(&pd_side.c_mac[..4], &m);
            let enc = cp.encrypt_command(&[1, 2, 3]);
            assert_eq!(enc.len(), 16);
            let reply = vec![0x53, 0x80, 20, 0, 0x0D, 2, 0x18, 0x50, round];
            let rm = pd::sign_reply(&mut pd_side, &reply);
            cp.verify_reply(&reply, &rm).unwrap();
            let data = pd::encrypt_reply(&pd_side, &[0, 1, 26, 0, 0xAB, 0xCD, 0xEF, 0x01]);
            assert_eq!(
                cp.decrypt_reply(&data).unwrap(),
                vec![0, 1, 26, 0, 0xAB, 0xCD, 0xEF, 0x01]
            );
        }
        assert_eq!(cp.verify_reply(&[0x53], &[0, 0, 0, 0]), Err(ScError::Mac));
        assert_eq!(cp.decrypt_reply(&[0; 15]), Err(ScError::Padding));
    }
}
